"""Controlled single-step corruptions of teacher rationales: the GenRM's negative training steps.

Each corruption rewrites one step of the offline teacher's rationale (``rationales.teacher_steps``) so
that it becomes false for the example; that step is labelled incorrect, every other step correct:

* ``type``          wrong product type: the <type> verdict becomes a seeded choice among the verdicts that
                    ``verifier.TYPE_TRUTH`` marks incorrect for the label; the evidence is kept.
* ``attribute``     a claimed attribute the product lacks: a query term the record lacks (facts'
                    ``missing_terms``) joins the <type> step's ``matches:`` list; with no such term, the
                    <product> step claims a colour from ``COLOURS`` that its fields do not contain.
* ``grade``         a flipped grade: <grade> and the judgement both name another grade (seeded; the judge
                    text is the teacher's for that grade). The judge step is the one labelled incorrect;
                    the grade's own truth is the outcome, not a step.
* ``contradiction`` a step contradicting the evidence: <attr> says a query term fails that the record has
                    (a matched term, not an excluded one it states); with no such word, the judgement
                    states a grade other than <grade> (which stays right).

The policy's own errors (:data:`POLICY_KINDS`; on 240 rationales the cpu-full SFT policy sampled at temperature 1,
155 of its 209 decided <query> steps and 140 of 195 <product> steps fail a record check, and 36 judgements state
no grade), off by default (``GenRMConfig.corruption_kinds``):

* ``query_word``    the <query> step names a word the query lacks: a word of the product's title (the policy copies
                    the record into its reading of the query) joins its ``specs:``; a colour from ``COLOURS`` when
                    every title word is in the query.
* ``product_word``  the <product> step names a word the record lacks: a query term the record lacks (the policy
                    copies the query into its reading of the product); a colour when there is none.
* ``no_grade``      the judgement states no grade: the teacher's judgement without its leading grade.

Every corrupted step is one the offline verifier marks incorrect (tested on the data), so corruption
labels and verifier truth agree by construction. Seeded: :func:`corrupt_frame` is a function of its seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from .facts import STOPWORDS, stem, tokens
from .labels import GradeScale, get_scale
from .rationales import teacher_steps
from .schema import STEPS, render_rationale
from .verifier import INCORRECT, TYPE_TRUTH

KINDS = ("type", "attribute", "grade", "contradiction")
POLICY_KINDS = ("query_word", "product_word", "no_grade")
COLOURS = ("purple", "orange", "turquoise", "magenta", "beige", "maroon", "olive", "teal", "lavender", "crimson")


@dataclass
class Corruption:
    steps: dict[str, str]  # the five step texts, one of them corrupted
    grade: str
    step: str  # the corrupted step (labelled incorrect)
    kind: str  # the corruption applied (a fallback may differ from the one asked for)

    def rationale(self, order: str = "grade_first") -> str:
        return render_rationale(self.steps, self.grade, order)

    def labels(self) -> list[int]:
        """1 = correct, 0 = incorrect, in STEPS order."""
        return [int(s != self.step) for s in STEPS]


def _other_grade(label: str, scale: GradeScale, rng: random.Random) -> str:
    return rng.choice([w for w in scale.words if w != label])


def _wrong_type(ex, steps, rng, scale, max_terms) -> Corruption:
    wrong = [v for v, t in TYPE_TRUTH[ex["label"]].items() if t == INCORRECT]
    evidence = steps["type"].split(";", 1)[1]
    return Corruption({**steps, "type": f"{rng.choice(wrong)};{evidence}"}, ex["label"], "type", "type")


def _lacking_attribute(ex, steps, rng, scale, max_terms) -> Corruption:
    missing = list(ex["missing_terms"])
    if missing:
        claimed = list(ex["matched_terms"])[:max_terms] + [rng.choice(missing)]
        verdict = steps["type"].split(";", 1)[0]
        return Corruption({**steps, "type": f"{verdict}; matches: {', '.join(claimed)}"}, ex["label"], "type",
                          "attribute")
    have = _product_stems(ex)
    return Corruption({**steps, "product": f"{steps['product']}, {_absent_colour(have, rng)}"}, ex["label"], "product",
                      "attribute")


def _flipped_grade(ex, steps, rng, scale, max_terms) -> Corruption:
    new = _other_grade(ex["label"], scale, rng)
    judge = teacher_steps({**ex, "label": new}, max_terms)["judge"]
    return Corruption({**steps, "judge": judge}, new, "judge", "grade")


def _contradiction(ex, steps, rng, scale, max_terms) -> Corruption:
    hits = set(ex["negation_hits"])
    listed = [t for t in list(ex["matched_terms"])[:max_terms] if t not in hits]
    if listed:
        return Corruption({**steps, "attr": f"some specs fail; fails: {rng.choice(listed)}"}, ex["label"], "attr",
                          "contradiction")
    judge = teacher_steps({**ex, "label": _other_grade(ex["label"], scale, rng)}, max_terms)["judge"]
    return Corruption({**steps, "judge": judge}, ex["label"], "judge", "contradiction")


def _product_stems(ex) -> set[str]:
    """Stems of the fields the verifier checks a <product> step against."""
    return {stem(t) for c in ("title", "brand", "colour", "category") for t in tokens(str(ex.get(c) or ""))}


def _absent_colour(have: set[str], rng) -> str:
    return rng.choice([c for c in COLOURS if stem(c) not in have])


def _query_word(ex, steps, rng, scale, max_terms) -> Corruption:
    query = {stem(t) for t in tokens(str(ex["query"]))}
    record = [t for t in dict.fromkeys(tokens(str(ex.get("title") or ""))) if t.isalpha() and len(t) > 2
              and t not in STOPWORDS and stem(t) not in query]
    word = rng.choice(record) if record else _absent_colour(query, rng)
    q = steps["query"]
    q = q.replace("; specs: ", f"; specs: {word}, ", 1) if "; specs: " in q else \
        q.replace("; excludes: ", f"; specs: {word}; excludes: ", 1) if "; excludes: " in q else f"{q}; specs: {word}"
    return Corruption({**steps, "query": q}, ex["label"], "query", "query_word")


def _product_word(ex, steps, rng, scale, max_terms) -> Corruption:
    have = _product_stems(ex)
    missing = [t for t in ex["missing_terms"] if t.isalpha() and stem(t) not in have]
    word = rng.choice(missing) if missing else _absent_colour(have, rng)
    return Corruption({**steps, "product": f"{steps['product']}, {word}"}, ex["label"], "product", "product_word")


def _no_grade(ex, steps, rng, scale, max_terms) -> Corruption:
    _, sep, rest = steps["judge"].partition(":")
    return Corruption({**steps, "judge": rest.strip() if sep else "no grade given"}, ex["label"], "judge", "no_grade")


_MAKERS = {"type": _wrong_type, "attribute": _lacking_attribute, "grade": _flipped_grade,
           "contradiction": _contradiction, "query_word": _query_word, "product_word": _product_word,
           "no_grade": _no_grade}


def corrupt(ex, kind: str, rng: random.Random, scale: GradeScale | str = "esci", max_terms: int = 4) -> Corruption:
    """One corruption of kind ``kind`` of the teacher rationale of ``ex`` (a row with the facts columns)."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {KINDS + POLICY_KINDS}")
    scale = get_scale(scale)
    return _MAKERS[kind](ex, teacher_steps(ex, max_terms), rng, scale, max_terms)


def corrupt_frame(df: pd.DataFrame, n_per_kind: int, seed: int = 0, order: str = "grade_first",
                  scale: GradeScale | str = "esci", kinds=KINDS) -> pd.DataFrame:
    """``n_per_kind`` corrupted rationales per kind, each of a row drawn (seeded, without replacement within a
    kind) from ``df``; columns of ``df`` + ``rationale``, ``labels`` (STEPS order), ``origin`` = corrupt:<kind>."""
    rng, rows, out = random.Random(seed), df.to_dict("records"), []
    for kind in kinds:
        for i in rng.sample(range(len(rows)), min(n_per_kind, len(rows))):
            c = corrupt(rows[i], kind, rng, scale)
            out.append({**rows[i], "rationale": c.rationale(order), "labels": c.labels(), "origin": f"corrupt:{kind}"})
    return pd.DataFrame(out, columns=[*df.columns, "rationale", "labels", "origin"])
