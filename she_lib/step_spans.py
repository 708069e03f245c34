"""Where each step of a completion sits in its tokens: character offsets from prefix decodes, then the parsed steps'
character spans mapped onto tokens. Only the token ids are read, so the spans hold whatever generated them (HF
``generate``, vLLM, a fake backend)."""
from __future__ import annotations

import os

from .labels import GradeScale
from .schema import GRADE_TAG, char_to_token_spans, parse


def token_char_offsets(ids, tokenizer) -> list[tuple[int, int]]:
    """(start, end) characters of each token in ``tokenizer.decode(ids, skip_special_tokens=True)``, from prefix
    decodes: token j covers [len(decode(ids[:j])), len(decode(ids[:j+1]))), each cut to the common prefix with the
    full text (a token ending inside a multi-byte character decodes to U+FFFD until the character completes)."""
    ids = [int(i) for i in ids]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    ends, prev = [], 0
    for j in range(len(ids)):
        text = tokenizer.decode(ids[:j + 1], skip_special_tokens=True)
        end = len(os.path.commonprefix([text, full]))
        ends.append(max(end, prev))
        prev = ends[-1]
    return [(0 if j == 0 else ends[j - 1], ends[j]) for j in range(len(ids))]


def completion_step_spans(ids, tokenizer, scale: GradeScale) -> tuple[str, dict[str, tuple[int, int]]]:
    """(text, {step: token range [i, j)}) of one completion's token ids (padding already removed), with the <grade>
    element's range under ``grade`` when there is one."""
    offsets = token_char_offsets(ids, tokenizer)
    text = tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
    parsed = parse(text, scale)
    spans = {n: s.span for n, s in parsed.steps.items()}
    if parsed.grade_span:
        spans[GRADE_TAG] = parsed.grade_span
    return text, char_to_token_spans(spans, offsets)
