"""Rationales for CoT SFT: an offline teacher from facts, and an LLM teacher with rejection filtering.

(a) :func:`teacher_rationale` writes each step from the example's facts (she_lib.facts), so that every verdict
    follows from the evidence the step states and the rationale ends on the human grade.

    <attr> states what the listing says about each spec (the query terms other than the head word, then the
    excluded terms as "no X"; facts.spec_facts): ``met`` (named; an exclusion the listing states absent),
    ``unstated`` (not named; an exclusion it does not confirm) or ``fails`` (an exclusion the listing states).
    A spec the listing does not state is not one it contradicts: the verdict is "some specs fail" if a spec
    fails, else "some specs unstated" if one is unstated, else "all specs met" (verifier.facts_attr_verdict),
    and every label allows it except one case. The step lists what fails and what is unstated, or with neither
    what is met ("no specs" when the query has none), e.g. "some specs unstated; unstated: 1/2, no straw".
    Where the evidence and the human label disagree, the label wins
    and the step says so in its own evidence: an Exact pair whose listing states an excluded term
    (verifier.expected_attr_verdict: Exact rules "some specs fail" out) gets "some specs unstated" with that
    exclusion listed as unstated (true: the listing never states it absent), and the judgement reads
    "unstated specs taken as met"; the human saw the mention was no violation, or the label is noisy
    (2% of the Exact train pairs of esci_us, e.g. a monk fruit sweetener "blend of monkfruit and erythritol"
    for "pure monkfruit sweetener without erythritol").

    <type> states the head word: ``matches: belt`` (the listing names it) or ``lacks: belt``. The lexical
    facts do not decide a type, so the verdict is the label's, chosen to agree with the attribute verdict:

    | label      | <type> verdict                                          | <attr> verdict (from the facts) |
    |------------|---------------------------------------------------------|---------------------------------|
    | Exact      | same type                                               | all met / unstated (a stated    |
    |            |                                                         | exclusion: unstated, see above) |
    | Substitute | same type if the head word matches and some spec is     | unstated / fails / all met      |
    |            | unstated or fails, else substitutable type (nothing     |                                 |
    |            | visible differs: the item itself does)                  |                                 |
    | Complement | complementary type                                      | any                             |
    | Irrelevant | same type if the head word matches and some spec is     | any                             |
    |            | unstated or fails (a central aspect fails), else        |                                 |
    |            | unrelated type                                          |                                 |
    | Partial    | as Substitute (WANDS)                                   | as Substitute                   |

    On the esci_us train split (3,672 pairs) the attribute verdict is the facts' own for 3,637 pairs (99%) and
    forced by the label for the 35 Exact pairs above; the type verdict is backed by the head word (same type, the
    listing names it) for 2,239 (61%) and is the label's for the rest (:func:`verdict_sources` tells which).
    Evidence lists at most ``max_terms`` words each, keeping rationales ~60-100 tokens.
(b) :class:`LLMTeacher` samples rationales from any HF causal LM (e.g. a bigger model on a GPU) given the
    gold grade as a hint, and keeps one only if :func:`accept` says it is well formed and its grade is
    the human label. ``generate`` reports acceptance rates overall and per label.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from .facts import AUDIENCE, head_term, spec_facts
from .labels import GradeScale
from .schema import build_messages, parse, render_rationale
from .verifier import expected_attr_verdict, facts_attr_verdict

__all__ = ["AUDIENCE", "LLMTeacher", "LLMTeacherConfig", "accept", "add_teacher_rationales", "teacher_rationale",
           "teacher_steps", "verdict_sources"]

_head = head_term  # the query's head word guess (kept under its old name)
MET, UNSTATED, FAILS = "all specs met", "some specs unstated", "some specs fail"


def _join(words, n: int) -> str:
    words = list(words)[:n]
    return ", ".join(words) if words else "none"


def _verdicts(ex, spec: dict) -> tuple[str, str, str]:
    """(type verdict, attr verdict, facts attr verdict) the teacher writes for ``ex`` (module docstring)."""
    label, facts = ex["label"], facts_attr_verdict(ex)
    attr = expected_attr_verdict(ex, label) or facts
    differs = spec["head_found"] and attr != MET  # the item named, some spec not confirmed
    if label == "Exact":
        t = "same type"
    elif label in ("Substitute", "Partial"):
        t = "same type" if differs else "substitutable type"
    elif label == "Complement":
        t = "complementary type"
    else:
        t = "same type" if differs else "unrelated type"
    return t, attr, facts


def teacher_steps(ex, max_terms: int = 4) -> dict[str, str]:
    """The five step texts for one example (a mapping with the facts columns, the record and ``label``)."""
    terms, neg, label = list(ex["query_terms"]), list(ex["negated_terms"]), ex["label"]
    spec = spec_facts(ex)
    head = spec["head"]
    specs = [t for t in terms if t != head]
    q = f"wants: {head or 'unclear'}"
    if specs:
        q += f"; specs: {_join(specs, max_terms)}"
    if neg:
        q += f"; excludes: {_join(neg, max_terms)}"
    ptype = " ".join(str(ex["product_type"]).split()[:5]) or "unknown item"
    p = ptype + (f" by {' '.join(str(ex['brand']).split()[:3])}" if ex["brand"] else "") + (
        f", {' '.join(str(ex['colour']).split()[:3])}" if ex["colour"] else "")
    t, a, facts = _verdicts(ex, spec)
    met, unstated, fails = spec["met"], spec["unstated"], spec["fails"]
    if a != facts and a == UNSTATED:  # the label rules the failing exclusion out: it is listed as unstated
        unstated, fails = unstated + fails, []
    # the lists the verdict rests on: what fails or is unstated, else what is met
    evidence = [f"{k}: {_join(v, max_terms)}" for k, v in (("fails", fails), ("unstated", unstated)) if v] or \
        ([f"met: {_join(met, max_terms)}"] if met else ["no specs"])
    attr = "; ".join([a, *evidence])
    item = f"matches: {head}" if spec["head_found"] else f"lacks: {head}" if head else "matches: none"
    if label == "Exact":
        j = "same type, every spec met" if a == MET else "same type, unstated specs taken as met"
    elif label in ("Substitute", "Partial"):
        j = {FAILS: "could serve instead, but some specs fail", UNSTATED: "could serve instead, but an unstated spec "
             "differs", MET: "a different item that could serve instead"}[a]
        j = "partly matches: " + j if label == "Partial" else j
    elif label == "Complement":
        j = f"used with {head or 'the item'}, not one itself"
    elif t == "same type":
        j = "a central aspect of the query fails"
    else:
        j = "does not serve the query"
    return {"query": q, "product": p, "type": f"{t}; {item}", "attr": attr, "judge": f"{label}: {j}"}


def verdict_sources(ex) -> dict[str, str]:
    """Whether the teacher's verdicts for ``ex`` are decided by the facts or forced by the label: ``type`` is
    "facts" when it says same type and the listing names the head word, ``attr`` when it is the facts verdict;
    otherwise "label"."""
    spec = spec_facts(ex)
    t, a, facts = _verdicts(ex, spec)
    return {"type": "facts" if t == "same type" and spec["head_found"] else "label",
            "attr": "facts" if a == facts else "label"}


def teacher_rationale(ex, order: str = "grade_first", max_terms: int = 4) -> str:
    return render_rationale(teacher_steps(ex, max_terms), ex["label"], order)


def add_teacher_rationales(df: pd.DataFrame, order: str = "grade_first") -> pd.DataFrame:
    out = df.copy()
    out["rationale"] = [teacher_rationale(r, order) for r in df.to_dict("records")]
    return out


# ------------------------------------------------------------------------------- LLM teacher (b)
def accept(text: str, gold: str, scale: GradeScale) -> tuple[bool, str]:
    """Rejection filter: (kept?, reason). Kept iff well formed and its grade equals the human label."""
    p = parse(text, scale)
    if not p.parsed:
        return False, "unparsable"
    if not p.well_formed:
        return False, "malformed"
    if p.grade != gold:
        return False, "wrong grade"
    return True, "accepted"


@dataclass
class LLMTeacherConfig:
    n_samples: int = 4  # rationales sampled per example; the first accepted one is kept
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 160
    batch_size: int = 8
    hint_gold: bool = True  # tell the teacher the human grade (TaoSR1 gave DeepSeek-R1 the gold label)


class LLMTeacher:
    """Any HF causal LM as a rationale teacher, with rejection filtering (see module docstring)."""

    def __init__(self, model, tokenizer, scale: GradeScale, order: str = "grade_first",
                 config: LLMTeacherConfig | None = None):
        self.model, self.tokenizer, self.scale, self.order = model, tokenizer, scale, order
        self.config = config or LLMTeacherConfig()

    def prompt(self, ex) -> str:
        msgs = build_messages(ex, self.scale, self.order)
        if self.config.hint_gold:
            msgs[-1]["content"] += (f"\nThe human grade is {ex['label']}. Write the tagged answer that "
                                    "explains it, one short line per tag.")
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def generate(self, df: pd.DataFrame, progress: bool = True) -> tuple[pd.DataFrame, dict]:
        """Sample, filter, and return (accepted rows with a ``rationale`` column, report)."""
        from .inference import generate

        cfg, rows = self.config, df.to_dict("records")
        samples = generate(self.model, self.tokenizer, [self.prompt(r) for r in rows], batch_size=cfg.batch_size,
                           max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                           top_p=cfg.top_p, num_return_sequences=cfg.n_samples, progress=progress,
                           desc="teacher")
        kept, reasons, per_label = [], Counter(), Counter()
        for row, texts in zip(rows, samples):
            verdicts = [accept(t, row["label"], self.scale) for t in texts]
            reasons.update(r for _, r in verdicts)
            good = [t for t, (ok, _) in zip(texts, verdicts) if ok]
            if good:
                kept.append({**row, "rationale": good[0]})
                per_label[row["label"]] += 1
        labels = Counter(r["label"] for r in rows)
        report = {
            "examples": len(rows), "samples": sum(reasons.values()), "sample_outcomes": dict(reasons),
            "sample_acceptance_rate": reasons["accepted"] / max(sum(reasons.values()), 1),
            "example_acceptance_rate": len(kept) / max(len(rows), 1),
            "example_acceptance_by_label": {k: per_label[k] / n for k, n in labels.items()},
        }
        return pd.DataFrame(kept, columns=[*df.columns, "rationale"]), report
