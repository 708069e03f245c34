"""Per-example facts that the reasoning steps state and the verifier checks.

All facts are plain functions of the query and the product record (never of the label):

* ``query_terms``   content words of the query that must hold (stop words and negated words removed)
* ``negated_terms`` words the query excludes: the words after a negator ("without", "no", "not",
  "non", "w/o") up to the next "with" / "and" / "," (e.g. "shoes without laces" -> ["laces"])
* ``product_type``  the leaf of the category path, else the title up to its first comma (<= 5 words)
* ``matched_terms`` query terms found in the product's title, brand, colour, category or bullets
* ``missing_terms`` query terms not found there
* ``negation_hits`` negated terms that the product's title or bullets do mention

Matching is on lower-cased word stems (plurals stripped by :func:`stem`), so "belts" matches "belt".
"""
from __future__ import annotations

import functools
import re

import pandas as pd

STOPWORDS = frozenset(
    "a an the for of in on to and or with by from at as is are be this that these those it its "
    "my your our their i me we you he she they them his her".split())
NEGATORS = frozenset({"without", "no", "not", "non", "w/o", "sans"})
SCOPE_END = frozenset({"with", "and", "but", ","})
_TOKEN = re.compile(r"[a-z0-9]+(?:[./'][a-z0-9]+)*|,")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@functools.lru_cache(maxsize=1 << 20)  # words repeat across millions of rows
def stem(word: str) -> str:
    """Crude plural stripping: ies -> y; (s|x|z|ch|sh)es -> drop es; s -> drop (not ss)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def split_query(query: str) -> tuple[list[str], list[str]]:
    """(positive content terms, negated terms) of a query, each de-duplicated in order."""
    pos, neg, negating = [], [], False
    for tok in tokens(query):
        if tok in NEGATORS:
            negating = True
            continue
        if tok in SCOPE_END:
            negating = False
            continue
        if tok in STOPWORDS:
            continue
        target = neg if negating else pos
        if tok not in target:
            target.append(tok)
    return pos, neg


def product_type(category: str, title: str) -> str:
    if category:
        return category.split(" > ")[-1].strip()
    head = title.split(",")[0].split(" - ")[0]
    return " ".join(head.split()[:5])


def example_facts(row) -> dict:
    """Facts of one example (a mapping with query/title/brand/colour/category/bullets)."""
    pos, neg = split_query(row["query"])
    text = " ".join(str(row[c]) for c in ("title", "brand", "colour", "category", "bullets"))
    have = {stem(t) for t in tokens(text)}
    title_bullets = {stem(t) for t in tokens(f"{row['title']} {row['bullets']}")}
    return {
        "query_terms": pos,
        "negated_terms": neg,
        "product_type": product_type(row["category"], row["title"]),
        "matched_terms": [t for t in pos if stem(t) in have],
        "missing_terms": [t for t in pos if stem(t) not in have],
        "negation_hits": [t for t in neg if stem(t) in title_bullets],
    }


FACT_COLUMNS = ("query_terms", "negated_terms", "product_type", "matched_terms", "missing_terms",
                "negation_hits")


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
