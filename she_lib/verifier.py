"""Offline verifier: the truth of each reasoning step that the human label and the records decide.

For one example (query, product record, human ``label``) and one rationale, :func:`verify` returns per
step of STEPS a :class:`StepTruth` (``correct`` / ``incorrect`` / ``unknown``, with the reason), the truth
of the ``<grade>`` and each step's format status (``ok`` / ``missing`` / ``repeated``). Pure Python.

Rules (``VerifierConfig`` holds every table and word list):

* grade   correct iff the ``<grade>`` word equals the human label; no readable grade is incorrect.
* judge   correct iff the grade the judgement states equals the human label; another grade, or none, is
          incorrect (the judgement's job is to restate the grade).
* type    its verdict (TYPE_VERDICTS) against the label, by TYPE_TRUTH (ESCI definitions, DESIGN.md):
          Exact: same type; Substitute: same or substitutable; Complement: complementary; Irrelevant:
          unrelated (same/substitutable type undecided: a central aspect may fail; complementary is wrong).
          The lexical facts do not decide a type (a product may name the query's item and be an accessory
          for it, or name it by a synonym). Record checks: every word after ``matches:`` must occur in the
          product record, no word after ``lacks:`` may.
* attr    its verdict (ATTR_VERDICTS) must follow from the facts and be allowed by the label. The facts
          verdict (:func:`facts_attr_verdict`, from she_lib.facts.spec_facts): "some specs fail" if the listing
          states an excluded term (a negation hit), else "some specs unstated" if some spec is unstated (a query
          term it does not name, an exclusion it does not confirm), else "all specs met". ATTR_TRUTH says which
          verdicts each label allows (Exact: met or unstated; Substitute: unstated or fail, met undecided since
          the type may be what differs; Complement / Irrelevant: every verdict undecided). The verdict to write is
          :func:`expected_attr_verdict`: the facts verdict when the label allows it (decided by the facts), else
          (evidence and label disagree: an Exact pair whose listing states an excluded term) the allowed verdict
          nearest to it in FACT_VERDICTS order, "some specs unstated" (forced by the label: the human judged the
          mention no violation). A verdict the label rules out is incorrect; a facts verdict other than the
          expected one is incorrect; "not decisive" (no facts claim) is judged by the label table alone.
          Record checks, on words that are query terms (others are not checkable): ``met:`` words must be
          matched terms or exclusions the listing states absent, ``unstated:`` words terms it does not name or
          exclusions it does not confirm, ``fails:`` words exclusions it states (a matched term is "the product
          has it").
* product every content word must occur in the product's title, brand, colour or category.
* query   every content word must occur in the query; words after ``excludes:`` must be negated terms
          of the query, words after ``wants:`` / ``specs:`` must not be negated-only terms.

Combining inside a step: any failed check -> incorrect; else type/attr are correct iff their verdict is
decided correct (a verdict outside the closed vocabulary is unknown), query/product are correct iff they
state at least one checkable word; otherwise unknown. A label without a row in the tables (the rules' claims
check passes none) decides no verdict: only the record checks count. Words are compared as stems
(she_lib.facts); stop words and ``filler_words`` (list keys, "no", "none", "unclear", "unknown item") are
not claims.

Bad input: text that is not a string or holds no tagged element is ``unparsable`` (every step unknown,
status missing, grade incorrect). A missing step is unknown with status ``missing``; a repeated step is
judged on its first occurrence (what the parser keeps) with status ``repeated``; the examiner turns
statuses into rewards.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .facts import STOPWORDS, example_facts, spec_facts, stem, tokens
from .labels import GradeScale, get_scale
from .schema import STEPS, ParsedRationale, parse

CORRECT, INCORRECT, UNKNOWN = "correct", "incorrect", "unknown"
TRUTHS = (CORRECT, INCORRECT, UNKNOWN)
_C, _X, _U = CORRECT, INCORRECT, UNKNOWN

TYPE_TRUTH = {  # label -> type verdict -> truth (DESIGN.md table); Partial is WANDS's middle grade
    "Exact": {"same type": _C, "substitutable type": _X, "complementary type": _X, "unrelated type": _X},
    "Substitute": {"same type": _C, "substitutable type": _C, "complementary type": _X, "unrelated type": _X},
    "Complement": {"same type": _X, "substitutable type": _X, "complementary type": _C, "unrelated type": _X},
    "Irrelevant": {"same type": _U, "substitutable type": _U, "complementary type": _X, "unrelated type": _C},
    "Partial": {"same type": _C, "substitutable type": _C, "complementary type": _U, "unrelated type": _X},
}
ATTR_TRUTH = {  # label -> attr verdict -> truth by the label alone (the facts decide within what it allows)
    "Exact": {"all specs met": _C, "some specs unstated": _C, "some specs fail": _X, "not decisive": _X},
    "Substitute": {"all specs met": _U, "some specs unstated": _C, "some specs fail": _C, "not decisive": _X},
    "Complement": {"all specs met": _U, "some specs unstated": _U, "some specs fail": _U, "not decisive": _U},
    "Irrelevant": {"all specs met": _U, "some specs unstated": _U, "some specs fail": _U, "not decisive": _U},
    "Partial": {"all specs met": _U, "some specs unstated": _C, "some specs fail": _C, "not decisive": _X},
}
FACT_VERDICTS = ("all specs met", "some specs unstated", "some specs fail")  # the attr verdicts facts decide, mild first


def facts_attr_verdict(f) -> str:
    """The attribute verdict the facts state: a spec fails > a spec is unstated > all met (module docstring)."""
    spec = spec_facts(f)
    return FACT_VERDICTS[2] if spec["fails"] else FACT_VERDICTS[1] if spec["unstated"] else FACT_VERDICTS[0]


def expected_attr_verdict(f, label, table: dict | None = None) -> str | None:
    """The attribute verdict consistent with the facts and the label: the facts verdict if the label allows it, else
    the allowed verdict of FACT_VERDICTS nearest to it (the milder on a tie). None if ``table`` has no row for the
    label or the label allows none of them."""
    row = (ATTR_TRUTH if table is None else table).get(label)
    if not row:
        return None
    k = FACT_VERDICTS.index(facts_attr_verdict(f))
    for j in sorted(range(len(FACT_VERDICTS)), key=lambda j: (abs(j - k), j)):
        if row.get(FACT_VERDICTS[j], _U) != _X:
            return FACT_VERDICTS[j]
    return None


@dataclass(frozen=True)
class VerifierConfig:
    type_truth: dict = field(default_factory=lambda: TYPE_TRUTH)
    attr_truth: dict = field(default_factory=lambda: ATTR_TRUTH)
    product_fields: tuple[str, ...] = ("title", "brand", "colour", "category")  # product-step claims
    record_fields: tuple[str, ...] = ("title", "brand", "colour", "category", "bullets")  # "matches:" claims
    filler_words: frozenset = frozenset(
        {"wants", "specs", "excludes", "matches", "lacks", "met", "unstated", "fails", "no", "none", "unclear",
         "unknown", "item"})


@dataclass(frozen=True)
class StepTruth:
    truth: str  # one of TRUTHS
    reason: str


@dataclass
class Verification:
    steps: dict[str, StepTruth]  # every name in STEPS
    grade: StepTruth
    status: dict[str, str]  # step -> "ok" | "missing" | "repeated"
    parsed: ParsedRationale
    unparsable: bool = False

    def truths(self) -> list[str]:
        return [self.steps[s].truth for s in STEPS]

    def vector(self) -> np.ndarray:
        """1.0 correct, 0.0 incorrect, nan unknown, in STEPS order."""
        return np.array([{CORRECT: 1.0, INCORRECT: 0.0}.get(t, np.nan) for t in self.truths()])


# ------------------------------------------------------------------------------------------ words
def _words(text: str) -> list[str]:
    return [t for t in tokens(str(text)) if t != "," and t not in STOPWORDS]


def _stems(text: str) -> set[str]:
    return {stem(t) for t in tokens(str(text))}


_KEYS = ("wants", "specs", "excludes", "matches", "lacks", "met", "unstated", "fails")


def _parts(text: str) -> dict[str, str]:
    """``"v; key: a, b; key2: c"`` -> {"": "v", "key": "a, b", "key2": "c"} (later keys win)."""
    out = {}
    for part in text.split(";"):
        key, sep, value = part.partition(":")
        if sep and key.strip().lower() in _KEYS:
            out[key.strip().lower()] = value
        else:
            out[""] = (out.get("", "") + " " + part).strip()
    return out


def _claims(text: str, config: VerifierConfig) -> list[str]:
    return [w for w in _words(text) if w not in config.filler_words]


def _record(ex, fields) -> set[str]:
    return set().union(*(_stems(ex.get(f) or "") for f in fields))


# ------------------------------------------------------------------------------------------ rules
def _combine(verdict: StepTruth | None, failed: list[str], ok_reason: str = "", has_claims: bool = True) -> StepTruth:
    """A failed check or an incorrect verdict -> incorrect (every reason); else the verdict; with no verdict,
    correct if the step states something checkable, else unknown."""
    if verdict is not None and verdict.truth == INCORRECT:
        failed = [*failed, verdict.reason]
    if failed:
        return StepTruth(INCORRECT, "; ".join(failed))
    if verdict is not None:
        return verdict
    return StepTruth(CORRECT, ok_reason) if has_claims else StepTruth(UNKNOWN, "states nothing checkable")


def _verdict(step, table: dict, label: str, name: str) -> StepTruth:
    if step.verdict is None:
        return StepTruth(UNKNOWN, f"no {name} verdict from the closed vocabulary")
    truth = table.get(label, {}).get(step.verdict, UNKNOWN)
    how = {CORRECT: "fits", INCORRECT: "contradicts", UNKNOWN: "is not decided by"}[truth]
    return StepTruth(truth, f"'{step.verdict}' {how} the label {label}")


def check_query(text: str, ex, f: dict, config: VerifierConfig) -> StepTruth:
    parts, q = _parts(text), _stems(ex["query"])
    neg, pos = {stem(t) for t in f["negated_terms"]}, {stem(t) for t in f["query_terms"]}
    claims = _claims(text, config)
    failed = [f"'{w}' is not in the query" for w in claims if stem(w) not in q]
    failed += [f"'{w}' is not excluded by the query" for w in _claims(parts.get("excludes", ""), config)
               if stem(w) not in neg]
    asked = _claims(parts.get("wants", "") + " " + parts.get("specs", ""), config)
    failed += [f"'{w}' is excluded by the query" for w in asked if stem(w) in neg and stem(w) not in pos]
    return _combine(None, failed, "every word is in the query", bool(claims))


def check_product(text: str, ex, config: VerifierConfig) -> StepTruth:
    have, claims = _record(ex, config.product_fields), _claims(text, config)
    failed = [f"'{w}' is not in the product's {'/'.join(config.product_fields)}" for w in claims
              if stem(w) not in have]
    return _combine(None, failed, "every word is in the product record", bool(claims))


def check_type(step, ex, label: str, config: VerifierConfig) -> StepTruth:
    have, parts = _record(ex, config.record_fields), _parts(step.text)
    failed = [f"claims a match on '{w}', which the product record lacks"
              for w in _claims(parts.get("matches", ""), config) if stem(w) not in have]
    failed += [f"claims the product lacks '{w}', but its record has it"
               for w in _claims(parts.get("lacks", ""), config) if stem(w) in have]
    return _combine(_verdict(step, config.type_truth, label, "type"), failed)


def _attr_verdict(step, f: dict, label: str, table: dict) -> StepTruth:
    """An attr verdict against the label's row of ``table`` and the facts (module docstring)."""
    if step.verdict is None:
        return StepTruth(UNKNOWN, "no attribute verdict from the closed vocabulary")
    row = table.get(label, {})
    truth = row.get(step.verdict, UNKNOWN)
    if truth == INCORRECT:
        return StepTruth(INCORRECT, f"'{step.verdict}' contradicts the label {label}")
    if not row or step.verdict not in FACT_VERDICTS:
        how = {CORRECT: "fits", UNKNOWN: "is not decided by"}[truth]
        return StepTruth(truth, f"'{step.verdict}' {how} the label {label}")
    want, facts = expected_attr_verdict(f, label, table), facts_attr_verdict(f)
    if step.verdict != want:
        return StepTruth(INCORRECT, f"the facts say '{want}'" + ("" if want == facts else
                                                                   f" (the label rules out '{facts}')"))
    if want == facts:
        return StepTruth(CORRECT, f"'{want}' follows from the facts and fits the label {label}")
    return StepTruth(CORRECT, f"'{want}' is what the label {label} allows nearest to the facts' '{facts}'")


def check_attr(step, f: dict, label: str, config: VerifierConfig) -> StepTruth:
    st = lambda ts: {stem(t) for t in ts}  # noqa: E731
    parts, asked = _parts(step.text), st([*f["query_terms"], *f["negated_terms"]])
    matched, hits, absent = st(f["matched_terms"]), st(f["negation_hits"]), st(f.get("negation_met", ()))
    unstated = st(f["missing_terms"]) | (st(f["negated_terms"]) - absent)
    claims = lambda key: [w for w in _claims(parts.get(key, ""), config) if stem(w) in asked]  # noqa: E731
    failed = [f"claims '{w}' fails, but the product has it" if stem(w) in matched else
              f"claims '{w}' fails, but the listing does not state it" for w in claims("fails")
              if stem(w) not in hits]
    failed += [f"claims '{w}' is met, which the listing does not state" for w in claims("met")
               if stem(w) not in matched | absent]
    failed += [f"claims '{w}' is unstated, but the listing states it" for w in claims("unstated")
               if stem(w) not in unstated]
    return _combine(_attr_verdict(step, f, label, config.attr_truth), failed)


def check_judge(parsed: ParsedRationale, label: str) -> StepTruth:
    if parsed.judge_grade is None:
        return StepTruth(INCORRECT, "the judgement states no grade")
    if parsed.judge_grade != label:
        return StepTruth(INCORRECT, f"the judgement states {parsed.judge_grade}, the label is {label}")
    return StepTruth(CORRECT, f"the judgement states the label {label}")


def check_grade(parsed: ParsedRationale, label: str) -> StepTruth:
    if parsed.grade is None:
        return StepTruth(INCORRECT, "no readable grade")
    if parsed.grade != label:
        return StepTruth(INCORRECT, f"grade {parsed.grade}, the label is {label}")
    return StepTruth(CORRECT, f"grade {parsed.grade} is the label")


# ------------------------------------------------------------------------------------------ verify
def step_status(parsed: ParsedRationale) -> dict[str, str]:
    """``missing`` if the parser found no such step, ``repeated`` if it found it more than once."""
    return {s: "missing" if s not in parsed.steps else
            "repeated" if f"repeated step <{s}>" in parsed.errors else "ok" for s in STEPS}


def facts_of(ex) -> dict:
    """``ex`` itself if it carries the facts columns, else its facts computed from the record."""
    if all(k in ex for k in ("query_terms", "negated_terms", "matched_terms", "negation_hits")):
        return ex
    return example_facts({c: ex.get(c) or "" for c in ("query", "title", "brand", "colour", "category", "bullets")})


def verify(ex, rationale: str | ParsedRationale, scale: GradeScale | str = "esci",
           config: VerifierConfig | None = None) -> Verification:
    """Truth of every step of ``rationale`` for example ``ex`` (a mapping with the record and ``label``;
    the facts columns are computed when absent). Never raises on any rationale."""
    config = config or VerifierConfig()
    scale = get_scale(scale)
    parsed = rationale if isinstance(rationale, ParsedRationale) else parse(rationale, scale)
    status, label = step_status(parsed), ex["label"]
    if not parsed.steps and parsed.grade_span is None:
        unknown = StepTruth(UNKNOWN, "unparsable")
        return Verification({s: unknown for s in STEPS}, StepTruth(INCORRECT, "unparsable"), status, parsed, True)
    f = facts_of(ex)
    rules = {"query": lambda st: check_query(st.text, ex, f, config),
             "product": lambda st: check_product(st.text, ex, config),
             "type": lambda st: check_type(st, ex, label, config),
             "attr": lambda st: check_attr(st, f, label, config),
             "judge": lambda st: check_judge(parsed, label)}
    steps = {s: rules[s](parsed.steps[s]) if s in parsed.steps else StepTruth(UNKNOWN, "missing")
             for s in STEPS}
    return Verification(steps, check_grade(parsed, label), status, parsed)


def judged_steps(v: Verification) -> dict[str, bool]:
    """``{step: right}`` over the steps of STEPS that ``v`` decides (correct or incorrect) in a parsable rationale;
    empty for an unparsable one."""
    if v.unparsable:
        return {}
    return {s: v.steps[s].truth == CORRECT for s in STEPS
            if v.status[s] != "missing" and v.steps[s].truth != UNKNOWN}


def step_accuracy(examples, completions, scale: GradeScale | str = "esci", config: VerifierConfig | None = None) -> dict:
    """Step accuracy of decoded rationales against the verifier: over the steps of STEPS it decides (correct or
    incorrect) in parsable rationales, the share that is correct; also per step and the verifier's coverage
    (decided / present steps). Unparsable rationales count in ``unparsable`` only. Rates over nothing are None."""
    scale = get_scale(scale)
    rows = examples.to_dict("records") if hasattr(examples, "to_dict") else list(examples)
    decided = {s: [] for s in STEPS}
    present, unparsable = 0, 0
    for ex, text in zip(rows, completions):
        v = verify(ex, text, scale, config)
        if v.unparsable:
            unparsable += 1
            continue
        present += sum(v.status[s] != "missing" for s in STEPS)
        for s, right in judged_steps(v).items():
            decided[s].append(right)
    flat = [x for xs in decided.values() for x in xs]
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {"step_accuracy": mean(flat), "step_coverage": len(flat) / present if present else None,
            "steps_decided": len(flat), "unparsable": unparsable,
            **{f"step_accuracy/{s}": mean(xs) for s, xs in decided.items()}}
