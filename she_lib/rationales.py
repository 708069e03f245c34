"""Rationales for CoT SFT: an offline teacher from facts, and an LLM teacher with rejection filtering.

(a) :func:`teacher_rationale` writes each step from the example's facts (she_lib.facts), consistent with
    the human label through the ESCI definitions (DESIGN.md):

    | label      | <type> verdict                                   | <attr> verdict                     |
    |------------|--------------------------------------------------|------------------------------------|
    | Exact      | same type                                        | all specs met                      |
    | Substitute | same type if the query's head word is in the product, else substitutable type | some specs fail |
    | Complement | complementary type                               | not decisive                       |
    | Irrelevant | unrelated type, or same type when the head word matches (a central aspect fails) | not decisive / some specs fail |

    Evidence after the verdict lists at most ``max_terms`` words, keeping rationales ~60-100 tokens.
(b) :class:`LLMTeacher` samples rationales from any HF causal LM (e.g. a bigger model on a GPU) given the
    gold grade as a hint, and keeps one only if :func:`accept` says it is well formed and its grade is
    the human label. ``generate`` reports acceptance rates overall and per label.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from .labels import GradeScale
from .schema import build_messages, parse, render_rationale

AUDIENCE = frozenset("men mens women womens woman man kids kid boys boy girls girl baby babies toddler adult "
                     "adults unisex".split())


def _head(terms: list[str]) -> str | None:
    """The query's head word guess: its last content term that is not an audience or number word."""
    for t in reversed(terms):
        if t not in AUDIENCE and not any(ch.isdigit() for ch in t):
            return t
    return terms[-1] if terms else None


def _join(words, n: int) -> str:
    words = list(words)[:n]
    return ", ".join(words) if words else "none"


def teacher_steps(ex, max_terms: int = 4) -> dict[str, str]:
    """The five step texts for one example (a mapping with the facts columns and ``label``)."""
    terms, neg, label = list(ex["query_terms"]), list(ex["negated_terms"]), ex["label"]
    head = _head(terms)
    specs = [t for t in terms if t != head]
    q = f"wants: {head or 'unclear'}"
    if specs:
        q += f"; specs: {_join(specs, max_terms)}"
    if neg:
        q += f"; excludes: {_join(neg, max_terms)}"
    ptype = " ".join(str(ex["product_type"]).split()[:5]) or "unknown item"
    p = ptype + (f" by {' '.join(str(ex['brand']).split()[:3])}" if ex["brand"] else "") + (
        f", {' '.join(str(ex['colour']).split()[:3])}" if ex["colour"] else "")
    matched, missing, hits = list(ex["matched_terms"]), list(ex["missing_terms"]), list(ex["negation_hits"])
    head_found = head is not None and head in matched
    fails = hits + [m for m in missing if m != head] or ["a detail the listing does not state"]
    evidence = f"matches: {_join(matched, max_terms)}"
    if label == "Exact":
        t, a, j = "same type", "all specs met", "same type, every spec met"
    elif label == "Substitute":
        t = "same type" if head_found else "substitutable type"
        a, j = f"some specs fail; fails: {_join(fails, max_terms)}", "could serve instead, but some specs fail"
    elif label == "Complement":
        t, a, j = "complementary type", "not decisive", f"used with {head or 'the item'}, not one itself"
    elif head_found:  # Irrelevant although the type matches: a central aspect fails
        t, a = "same type", f"some specs fail; fails: {_join(fails, max_terms)}"
        j = "a central aspect of the query fails"
    else:
        t, a, j = "unrelated type", "not decisive", "does not serve the query"
    return {"query": q, "product": p, "type": f"{t}; {evidence}", "attr": a, "judge": f"{label}: {j}"}


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
