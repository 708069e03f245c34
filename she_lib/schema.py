"""The stepwise reasoning format: prompt, tagged rationale, and a parser that never raises.

A rationale is six tagged elements, one per line. Respond-then-think (``grade_first``, the TaoSR
papers' deployed order; serving can read the first answer token)::

    <grade>Substitute</grade>
    <query>wants: pants; specs: carhartt, double, front, men</query>
    <product>Pants by Carhartt, Brown</product>
    <type>same type; matches: pants</type>
    <attr>some specs unstated; unstated: double, front; met: carhartt, men</attr>
    <judge>Substitute: could serve instead, but an unstated spec differs</judge>

Think-then-respond (``steps_first``) writes the five steps first and ``<grade>`` last. The five steps
(STEPS) are query understanding, product understanding, product-type match, attribute match and the
judgement, which restates the grade. Steps 3 and 4 open with a verdict from a closed vocabulary
(TYPE_VERDICTS, ATTR_VERDICTS) followed by "; evidence", so the verifier can read them exactly.

:func:`parse` returns the steps with character spans (of the whole tagged element, tags included: the
tokens the model wrote for that step) and the grade; problems are listed in ``errors``, never raised.
:func:`token_spans` maps character spans to token index ranges through a tokenizer's offset mapping.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .labels import GradeScale

STEPS = ("query", "product", "type", "attr", "judge")
STEP_TITLES = {"query": "query understanding", "product": "product understanding",
               "type": "product-type match", "attr": "attribute match", "judge": "judgement"}
GRADE_TAG = "grade"
ORDERS = ("grade_first", "steps_first")
TYPE_VERDICTS = ("same type", "substitutable type", "complementary type", "unrelated type")
# "some specs unstated": the listing does not name a spec (unconfirmed, compatible with Exact); "some specs fail":
# it contradicts one (states an excluded term); see she_lib.verifier for what each label allows
ATTR_VERDICTS = ("all specs met", "some specs unstated", "some specs fail", "not decisive")
_ELEMENT = re.compile(r"<(grade|query|product|type|attr|judge)>(.*?)</\1>", re.S)


# --------------------------------------------------------------------------------------- rendering
def clean_step_text(text: str) -> str:
    """Step text may not contain tag brackets or newlines (they would break the format)."""
    return " ".join(str(text).replace("<", "(").replace(">", ")").split())


def render_rationale(steps: dict[str, str], grade: str, order: str = "grade_first") -> str:
    """Tagged text of a rationale; ``steps`` maps every name in STEPS to its text."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    missing = [s for s in STEPS if s not in steps]
    if missing:
        raise ValueError(f"rationale misses steps {missing}")
    body = [f"<{s}>{clean_step_text(steps[s])}</{s}>" for s in STEPS]
    head = f"<{GRADE_TAG}>{grade}</{GRADE_TAG}>"
    return "\n".join([head, *body] if order == "grade_first" else [*body, head])


def system_prompt(scale: GradeScale, order: str = "grade_first") -> str:
    """Short on purpose (~75 tokens): on a 2-core CPU the prompt's prefill dominates evaluation time."""
    defs = {"Exact": "is what the query asks for, all specs met",
            "Substitute": "could replace it, some spec fails",
            "Complement": "is used together with it",
            "Irrelevant": "unrelated, or a central aspect fails",
            "Partial": "partly matches"}
    grades = "; ".join(f"{w}: {defs.get(w, w)}" for w in scale.words)
    tags = "<grade> <query> <product> <type> <attr> <judge>" if order == "grade_first" else \
        "<query> <product> <type> <attr> <judge> <grade>"
    return f"Grade how relevant the product is to the search query. {grades}. Answer in tags: {tags}."


def user_prompt(example) -> str:
    """The pair as the model sees it (empty fields are left out)."""
    lines = [f"Query: {example['query']}", f"Product: {example['title']}"]
    for label, col in (("Brand", "brand"), ("Colour", "colour"), ("Category", "category")):
        if example.get(col):
            lines.append(f"{label}: {example[col]}")
    details = example.get("bullets") or example.get("description")
    if details:
        lines.append(f"Details: {details}")
    if example.get("evidence"):  # only when the profile sets prompt_evidence (data.with_evidence)
        lines.append(f"Evidence: {example['evidence']}")
    return "\n".join(lines)


def build_messages(example, scale: GradeScale, order: str = "grade_first", answer: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt(scale, order)},
            {"role": "user", "content": user_prompt(example)}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def render_prompt(tokenizer, example, scale: GradeScale, order: str = "grade_first") -> str:
    """The chat-template prompt up to the start of the assistant turn."""
    return tokenizer.apply_chat_template(build_messages(example, scale, order), tokenize=False,
                                         add_generation_prompt=True)


# ----------------------------------------------------------------------------------------- parsing
@dataclass
class Step:
    name: str
    text: str
    span: tuple[int, int]  # characters of the whole element, tags included
    verdict: str | None = None


@dataclass
class ParsedRationale:
    steps: dict[str, Step] = field(default_factory=dict)
    grade: str | None = None
    grade_span: tuple[int, int] | None = None
    judge_grade: str | None = None
    order: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def parsed(self) -> bool:
        """A grade could be read (the minimum for scoring)."""
        return self.grade is not None

    @property
    def well_formed(self) -> bool:
        """Grade plus all five steps, each once, in order, nothing else."""
        return self.parsed and not self.errors


def _verdict(text: str, vocab: tuple[str, ...]) -> str | None:
    head = text.split(";")[0].strip().lower()
    return head if head in vocab else None


def parse(text, scale: GradeScale) -> ParsedRationale:
    """Split a completion into steps and grade. Never raises; problems go to ``errors``."""
    out = ParsedRationale()
    if not isinstance(text, str):
        out.errors.append(f"not text: {type(text).__name__}")
        return out
    seen, last_end = [], 0
    for m in _ELEMENT.finditer(text):
        name, body = m.group(1), m.group(2).strip()
        if text[last_end:m.start()].strip():
            out.errors.append(f"text outside tags before <{name}>")
        last_end = m.end()
        if name == GRADE_TAG:
            if out.grade_span is not None:
                out.errors.append("repeated <grade>")
                continue
            out.grade_span = (m.start(), m.end())
            out.grade = scale.find(body)
            if out.grade is None:
                out.errors.append(f"unknown grade {body[:40]!r}")
            out.order = "grade_first" if not seen else "steps_first"
            continue
        if name in out.steps:
            out.errors.append(f"repeated step <{name}>")
            continue
        vocab = TYPE_VERDICTS if name == "type" else ATTR_VERDICTS if name == "attr" else None
        out.steps[name] = Step(name, body, (m.start(), m.end()), _verdict(body, vocab) if vocab else None)
        seen.append(name)
    if text[last_end:].strip():
        out.errors.append("text after the last tag")
    missing = [s for s in STEPS if s not in out.steps]
    if missing:
        out.errors.append(f"missing steps {missing}")
    if out.grade_span is None:
        out.errors.append("missing <grade>")
    if [s for s in STEPS if s in seen] != seen:
        out.errors.append("steps out of order")
    if out.order == "steps_first" and len(seen) < len(STEPS):
        out.errors.append("<grade> in the middle of the steps")
    if "judge" in out.steps:
        out.judge_grade = scale.find(re.split(r"[:;,.]", out.steps["judge"].text)[0])
        if out.judge_grade is None:
            out.errors.append("judgement states no grade")
        elif out.grade and out.judge_grade != out.grade:
            out.errors.append("judgement contradicts <grade>")
    return out


def completion_text(completion) -> str | None:
    """The text of a completion: a string, or TRL's conversational form [{"role": "assistant", "content": ...}]
    (content a string or a list of {"type": "text", "text": ...} parts). Anything else -> None (unparsable)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        parts = []
        for m in completion:
            if m.get("role", "assistant") != "assistant":
                continue
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            if isinstance(c, str):
                parts.append(c)
        return "".join(parts) if parts else None
    return None


def char_to_token_spans(spans: dict[str, tuple[int, int]], offsets) -> dict[str, tuple[int, int]]:
    """Token index ranges [i, j) of the tokens overlapping each character span.

    ``offsets`` is a tokenizer's offset mapping: one (start, end) character pair per token. A token
    belongs to a span if their character ranges overlap; a span that no token overlaps is left out."""
    out = {}
    for name, (a, b) in spans.items():
        idx = [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]
        if idx:
            out[name] = (idx[0], idx[-1] + 1)
    return out


def token_spans(parsed: ParsedRationale, text: str, tokenizer) -> dict[str, tuple[int, int]]:
    """Token spans of each parsed step (and ``grade``) in ``tokenizer(text)`` (no special tokens)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = {n: s.span for n, s in parsed.steps.items()}
    if parsed.grade_span:
        spans[GRADE_TAG] = parsed.grade_span
    return char_to_token_spans(spans, enc["offset_mapping"])
