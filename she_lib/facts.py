"""Per-example facts that the reasoning steps state and the verifier checks.

All facts are plain functions of the query and the product record (never of the label):

* ``query_terms``   content words of the query that must hold (stop words and negated words removed)
* ``negated_terms`` words the query excludes: the words in the scope of a negator (:func:`split_query`,
                    e.g. "shoes without laces" -> ["laces"], "listen without prejudice shirt" -> [])
* ``product_type``  the leaf of the category path, else the title up to its first comma (<= 5 words)
* ``matched_terms`` query terms found in the product's title, brand, colour, category or bullets
* ``missing_terms`` query terms not found there
* ``negation_hits`` negated terms that the product's title or bullets state it has: every word of the negated
                    phrase (less the words the query also asks for) is stated there outside a negation of the
                    product's own ("without buckle", "buckle-free", "mattress not included" state absence)
* ``negation_met``  negated terms that the product's title or bullets state it lacks (a word of the negated
                    phrase inside such a negation); a term is never both a hit and met (the stated absence wins)

Matching is on lower-cased word stems (plurals stripped by :func:`stem`), so "belts" matches "belt".

Negation scope (:func:`split_query`; the same scanner reads the product's title and bullets)
-----------------------------------------------------------------------------------------
A negator (NEGATORS: "without", "w/o", "sans", "not", "no", "non"; and a hyphenated "-free" suffix) excludes the
noun phrase that follows it, not the rest of the query:

1. Scope: the next content words, at most MAX_SCOPE (3: "without interesterified soybean oil"), stopping before a
   SCOPE_END word (a conjunction or preposition: "with", "and", "for", "by", "on", "to", ...), an audience word
   ("men", "womens", "kids": "sweatshirt without hood mens"), another negator, or punctuation (, . ; : ! ? ( )
   and a free-standing dash). Determiners inside ("without a trailer", "without any mix") are skipped.
2. Prefixes: "non" and "no" modify the next word only ("non slip bath mat" -> [slip]; "no thermostat heat
   trace" -> [thermostat]; "newborn gloves no scratch" -> [scratch]), except a "no" opening a clause after
   punctuation, which takes a phrase ("...; no flashy colors." -> [flashy, colors]). "X-free" excludes X
   ("sugar-free oyster sauce" -> [sugar]); an unhyphenated "free" is a word ("free motion sandal").
3. Not an exclusion (the negator is dropped, the words after it stay query terms):
   * slogans and titles: the scope holds a medium a slogan is printed on (MEDIA: "listen without prejudice
     shirt", "people not puzzles shirt"); "not" after a verb or auxiliary (CLAUSE_AUX: "laziness does not
     exist", "beige is not a color", "humans need not apply") or a preposition ("the journey of not knowing");
     "not" before a determiner, pronoun or wh-word (CLAUSE_OPENERS: "not the mood", "not everyone gets it",
     "waste not how to ..."); "without" before a pronoun ("work will suck without you water bottle");
   * idioms: "not" / "no" before a degree word (DEGREE: "not more than three dollars", "shed no more"), "no"
     before a number ("mix no 6 heels" is No. 6) or punctuation ("no, pepsi ..."), "not" before another
     negator ("not without"), "not included" (POSTPOSED: a title in a query: "oxygen not included").
   A rule cannot see every title ("topology without tears", "rebel without a green card") or every trailing
   modifier ("belt without buckle full grain" -> [buckle, full, grain]); tests/test_facts.py lists the real
   queries it gets wrong.
4. On the product side (``product=True``) the query-only exceptions of 3 (clauses, openers, pronouns) do not
   apply ("does not contain gelatin" states absence), a verb after the negator is skipped ("does not come with
   a mattress" -> [mattress]), a POSTPOSED negation excludes the word before it ("mattress not included",
   "lid sold separately") or, with none, the phrase after it ("not included: buckle"), and a negator followed
   by a POSTPOSED word within MAX_SCOPE words excludes the words between ("no in-wall wiring needed").
"""
from __future__ import annotations

import functools
import re

import pandas as pd

STOPWORDS = frozenset(
    "a an the for of in on to and or with by from at as is are be this that these those it its "
    "my your our their i me we you he she they them his her".split())
# who a product is for: not the item the query asks for, and the end of a negated phrase
AUDIENCE = frozenset("men mens women womens woman man kids kid boys boy girls girl baby babies toddler adult "
                     "adults unisex".split())
NEGATORS = frozenset({"without", "no", "not", "non", "w/o", "sans"})
FREE = "-free"  # the token of a hyphenated "-free" suffix ("sugar-free")
MAX_SCOPE = 3  # content words a negator excludes at most
SCOPE_END = frozenset(
    "with and but or nor for by on in to from at of than as if that which who whom whose how what why when where "
    "while because".split()) | AUDIENCE
SCOPE_SKIP = frozenset("a an the any some".split())  # determiners inside a negated phrase
# a slogan / title is printed on it: a negated phrase that holds one of these is text on the product
MEDIA = frozenset("shirt tshirt tee sticker decal poster".split())
# "not" after these negates a clause (a title, a slogan, a sentence), not an item: "is not", "does not", "you're not"
CLAUSE_AUX = frozenset("is are was were am be been being does do did will would can could shall may might need "
                       "re s m".split())
# "not" before these opens a clause: "not the mood", "not everyone gets it", "not your phone", "waste not how to"
CLAUSE_OPENERS = frozenset(
    "a an the this that these those your my our their his her its i you we they he she it me us them him everyone "
    "everybody anyone anybody everything anything all every how what why when where who which".split())
PRONOUNS = frozenset("i you we they he she it me us them him her".split())
PREPOSITIONS = frozenset("of for to by about".split())
DEGREE = frozenset("more less longer only yet even so too enough just quite very always".split())
# postposed negations: "batteries not included", "lid sold separately" (the word before is excluded)
POSTPOSED = frozenset("included needed required attached provided".split())
# verbs between a negator and what it excludes, in product text: "does not contain gelatin", "not come with a lid"
VERB_SKIP = frozenset("include includes including contain contains containing come comes coming with have has use "
                      "uses need needs require requires feature features".split())
FACTS_VERSION = 2  # bump when a fact changes meaning: cached processed splits of another version are rebuilt
_TOKEN = re.compile(r"[a-z0-9]+(?:[./'][a-z0-9]+)*|,")
# words, a hyphenated "-free" suffix, and the punctuation that ends a negated phrase (a dash only free-standing)
_SCAN_TOKEN = re.compile(r"[a-z0-9]+(?:[./'][a-z0-9]+)*|(?<=[a-z0-9])-free\b|[,.;:!?()\[\]{}|]"
                         r"|(?<![a-z0-9])[-\u2013\u2014]+(?![a-z0-9])")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@functools.lru_cache(maxsize=1 << 20)  # words repeat across millions of rows
def stem(word: str) -> str:
    """Crude plural stripping: 's -> drop; ies -> y; (s|x|z|ch|sh)es -> drop es; s -> drop (not ss)."""
    if word.endswith("'s"):  # "men's" = "mens" = "men"
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _is_word(tok: str | None) -> bool:
    return tok is not None and tok[0].isalnum()


def _content(tok: str | None) -> bool:
    return _is_word(tok) and tok not in STOPWORDS and tok not in NEGATORS


def _not_an_exclusion(toks: list[str], i: int, product: bool) -> bool:
    """Rule 3 of the module docstring: the negator at ``toks[i]`` excludes nothing."""
    neg, prev = toks[i], toks[i - 1] if i else None
    nxt = toks[i + 1] if i + 1 < len(toks) else None
    if not _is_word(nxt) or nxt in DEGREE:
        return True  # nothing follows, "no, ...", "not more than", "shed no more"
    if neg == "not" and (nxt in NEGATORS or nxt in POSTPOSED):
        return True  # "not without"; "not included" (query side: a title; product side: handled as postposed)
    if neg == "no" and any(ch.isdigit() for ch in nxt):
        return True  # "no 6" is No. 6
    if product:
        return False
    if neg == "not":
        return (prev in CLAUSE_AUX or prev in PREPOSITIONS or nxt in CLAUSE_OPENERS
                or (prev is not None and prev.endswith(("'s", "'re", "'m"))))
    return neg in ("without", "w/o", "sans") and nxt in PRONOUNS


def _scope(toks: list[str], i: int, product: bool) -> tuple[int, list[int]]:
    """(index after the scope, indices of the excluded words) of the negator at ``toks[i]`` (rules 1-2)."""
    neg, prev = toks[i], toks[i - 1] if i else None
    if product:  # "no in-wall wiring needed": everything up to a postposed word within reach
        ahead = toks[i + 1:i + 2 + MAX_SCOPE]
        end = next((k for k, t in enumerate(ahead) if t in POSTPOSED or not _is_word(t)), None)
        if end is not None and ahead[end] in POSTPOSED:
            return i + 2 + end, [i + 1 + k for k, t in enumerate(ahead[:end]) if _content(t)]
    prefix = neg == "non" or (neg == "no" and _is_word(prev)) or (neg == "no" and prev is None)
    limit = 1 if prefix else MAX_SCOPE
    out, j = [], i + 1
    while j < len(toks) and len(out) < limit:
        t = toks[j]
        if product and not out and t in VERB_SKIP:
            j += 1
            continue
        if not _is_word(t) or t in SCOPE_END or t in NEGATORS:
            break
        if _content(t) and t not in SCOPE_SKIP:
            out.append(j)
        j += 1
    return j, out


def scan(text: str, product: bool = False) -> tuple[list[str], list[list[str]]]:
    """(words outside any negation, in order; negated phrases, in order) of ``text`` by the rules of the module
    docstring. Stop words are left out of both; ``product`` reads a listing instead of a query (rule 4)."""
    toks = _SCAN_TOKEN.findall(str(text).lower())
    role: list[str | None] = [None] * len(toks)
    phrases: list[list[int]] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        postposed = product and t == "not" and i + 1 < len(toks) and toks[i + 1] in POSTPOSED
        sold_sep = product and t == "sold" and i + 1 < len(toks) and toks[i + 1] == "separately"
        if t == FREE or postposed or sold_sep:  # "sugar-free", "batteries not included", "lid sold separately"
            if i and _content(toks[i - 1]):
                role[i - 1] = "neg"
                phrases.append([i - 1])
                i += 1 if t == FREE else 2
                continue
            if postposed:  # "not included: buckle" excludes what follows
                end, idx = _scope(toks, i + 1, product)
                for k in idx:
                    role[k] = "neg"
                phrases += [idx] if idx else []
                i = end
                continue
            i += 1 if t == FREE else 2
            continue
        if t in NEGATORS and not _not_an_exclusion(toks, i, product):
            end, idx = _scope(toks, i, product)
            if idx and not any(stem(toks[k]) in MEDIA for k in idx):
                for k in idx:
                    role[k] = "neg"
                phrases.append(idx)
                i = end
                continue
        if _content(t) and role[i] is None:
            role[i] = "pos"
        i += 1
    return [t for t, r in zip(toks, role) if r == "pos"], [[toks[k] for k in p] for p in phrases]


def _unique(words) -> list[str]:
    return list(dict.fromkeys(words))


def split_query(query: str) -> tuple[list[str], list[str]]:
    """(positive content terms, negated terms) of a query, each de-duplicated in order (module docstring)."""
    pos, phrases = scan(query)
    return _unique(pos), _unique(w for p in phrases for w in p)


def product_type(category: str, title: str) -> str:
    if category:
        return category.split(" > ")[-1].strip()
    head = title.split(",")[0].split(" - ")[0]
    return " ".join(head.split()[:5])


def negation_facts(query: str, listing: str) -> tuple[list[str], list[str]]:
    """(negation hits, negation met) of a query against a listing's text (module docstring): per negated phrase
    of the query, its words that the query does not also ask for are met if the listing states any of them absent,
    else hits if the listing states every one of them."""
    pos, phrases = scan(query)
    if not phrases:
        return [], []
    asked = {stem(w) for w in pos}
    stated_words, denied_phrases = scan(listing, product=True)
    stated, denied = {stem(w) for w in stated_words}, {stem(w) for p in denied_phrases for w in p}
    hits, met = [], []
    for phrase in phrases:
        words = [w for w in phrase if stem(w) not in asked]
        if words and any(stem(w) in denied for w in words):
            met += words
        elif words and all(stem(w) in stated for w in words):
            hits += words
    return _unique(hits), _unique(w for w in met if w not in hits)


def head_term(terms) -> str | None:
    """The query's head word guess: its last content term that is not an audience or number word."""
    terms = list(terms)
    for t in reversed(terms):
        if t not in AUDIENCE and not any(ch.isdigit() for ch in t):
            return t
    return terms[-1] if terms else None


def spec_facts(f) -> dict:
    """What the listing states about each spec of the query, from the facts columns of ``f``.

    The specs are the query terms other than the head word (:func:`head_term`, the item itself: the type step's
    business), then the negated terms, written "no X". Each spec is ``met`` (a matched term; an excluded term the
    listing states absent: ``negation_met``), ``fails`` (an excluded term the listing states: ``negation_hits``)
    or ``unstated`` (a query term the listing does not name; an excluded term it neither states nor states
    absent). Returns head, head_found and the three lists, in query order."""
    terms, matched = list(f["query_terms"]), set(f["matched_terms"])
    hits, met_neg = set(f["negation_hits"]), set(f.get("negation_met", ()))
    head = head_term(terms)
    out = {"head": head, "head_found": head is not None and head in matched, "met": [], "unstated": [],
           "fails": []}
    for t in terms:
        if t != head:
            out["met" if t in matched else "unstated"].append(t)
    for t in f["negated_terms"]:
        out["fails" if t in hits else "met" if t in met_neg else "unstated"].append(f"no {t}")
    return out


def example_facts(row) -> dict:
    """Facts of one example (a mapping with query/title/brand/colour/category/bullets)."""
    pos, neg = split_query(row["query"])
    text = " ".join(str(row[c]) for c in ("title", "brand", "colour", "category", "bullets"))
    have = {stem(t) for t in tokens(text)}
    hits, met = negation_facts(row["query"], f"{row['title']} . {row['bullets']}")
    return {
        "query_terms": pos,
        "negated_terms": neg,
        "product_type": product_type(row["category"], row["title"]),
        "matched_terms": [t for t in pos if stem(t) in have],
        "missing_terms": [t for t in pos if stem(t) not in have],
        "negation_hits": hits,
        "negation_met": met,
    }


FACT_COLUMNS = ("query_terms", "negated_terms", "product_type", "matched_terms", "missing_terms",
                "negation_hits", "negation_met")


FACT_INPUTS = ("query", "title", "brand", "colour", "category", "bullets")


def add_facts(df: pd.DataFrame, chunk: int = 100_000) -> pd.DataFrame:
    """Return ``df`` with one column per fact (lists of str, product_type str).

    Reads only the columns the facts need, ``chunk`` rows at a time, and shares the other columns with ``df``."""
    out: dict[str, list] = {col: [] for col in FACT_COLUMNS}
    for lo in range(0, len(df), chunk):
        part = df.iloc[lo:lo + chunk]
        for values in zip(*(part[c].tolist() for c in FACT_INPUTS)):
            facts = example_facts(dict(zip(FACT_INPUTS, values)))
            for col in FACT_COLUMNS:
                out[col].append(facts[col])
    return df.assign(**out)
