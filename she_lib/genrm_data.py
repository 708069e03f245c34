"""GenRM data: the prompt it reads, the verdict lines it writes, and its three sources of labelled steps.

Format (a chat; training is on the assistant turn only, through she_lib.sft)::

    system     GENRM_SYSTEM
    user       the pair as the policy sees it (schema.user_prompt), "Human grade: <label>" (``show_label``),
               "Rationale:", the rationale as written
    assistant  query: correct
               product: correct
               type: incorrect
               attr: unknown
               judge: correct

Always one line per step of STEPS, in order, whatever the rationale holds. The verdict words must be
single, distinct tokens after ``": "`` (:func:`verdict_token_ids` checks; SmolLM2: " correct" 2887,
" incorrect" 11798, " unknown" 6552), so P(correct) is read from one logit pair per step.

The human grade is in the prompt because every step label is relative to it: SHE's examiner is offline and RL
knows the gold grade, and without it the GenRM would have to solve the relevance task to judge the type, attribute
and judgement steps (a grade corruption leaves the type and attribute steps right for the human grade and makes
the judgement wrong). A step the verifier leaves undecided is written with the filler word (``unknown``) and left
out of the loss (she_lib.genrm weights its token 0): the row still teaches its decided steps, so Complement and
Irrelevant policy samples, which nearly always hold an undecided step, are trained on.

Sources; every frame has the example's columns plus ``rationale``, ``labels`` (per step of STEPS: 1
correct, 0 incorrect, -1 undecided) and ``origin``. Every label is the offline verifier's (so all sources agree),
except the corrupted step, which is incorrect by construction (she_lib.corruptions, tested to agree):

* ``teacher``    the offline teacher's rationale;
* ``corrupt:*``  single-step corruptions (she_lib.corruptions; the kinds of ``GenRMConfig.corruption_kinds``);
* ``policy``     rationales sampled from a policy (missing steps -1).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .corruptions import KINDS, corrupt_frame
from .data import evidence_line
from .labels import GradeScale, get_scale
from .rationales import teacher_rationale
from .schema import STEPS, user_prompt
from .verifier import verify

GENRM_SYSTEM = ("Check each step of a search-relevance rationale against the query and the product. "
                "Write one line per step: query, product, type, attr, judge, each followed by ': correct' "
                "or ': incorrect'.")


def genrm_messages(ex, rationale: str, show_label: bool = True, show_evidence: bool = False) -> list[dict]:
    """System + user messages of the GenRM prompt for one (example, rationale); ``show_label``: with the human
    grade (``ex["label"]``); ``show_evidence``: with the pair's evidence line (the query terms the record states and
    misses, data.evidence_line), what the attribute and type steps are checked against."""
    text = rationale if isinstance(rationale, str) else repr(rationale)
    if show_evidence and not ex.get("evidence"):
        ex = {**ex, "evidence": evidence_line(ex["matched_terms"], ex["missing_terms"], ex["negation_hits"])}
    label = f"\nHuman grade: {ex['label']}" if show_label else ""
    return [{"role": "system", "content": GENRM_SYSTEM},
            {"role": "user", "content": f"{user_prompt(ex)}{label}\nRationale:\n{text}"}]


def verdict_text(labels, words=("correct", "incorrect"), filler: str | None = None) -> str:
    """The assistant turn: ``name: word`` per step; label 1 -> words[0], 0 -> words[1], -1 -> ``filler`` (refused
    without one)."""
    ok = (0, 1, -1) if filler else (0, 1)
    if any(int(v) not in ok for v in labels) or len(labels) != len(STEPS):
        raise ValueError(f"need one label in {ok} per step of {STEPS}, got {list(labels)}")
    word = {1: words[0], 0: words[1], -1: filler}
    return "\n".join(f"{s}: {word[int(v)]}" for s, v in zip(STEPS, labels))


def verdict_token_ids(tokenizer, words=("correct", "incorrect")) -> list[int]:
    """Token id of each verdict word as it follows ``"step: "``; each must be one token, all distinct."""
    ids = []
    for w in words:
        full = tokenizer(f"type: {w}", add_special_tokens=False).input_ids
        head = tokenizer("type:", add_special_tokens=False).input_ids
        if full[:len(head)] != head or len(full) != len(head) + 1:
            raise ValueError(f"verdict word {w!r} is not a single token after 'type:' ({full}); pick another")
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"verdict words {list(words)} share a token ({ids})")
    return ids


def build_genrm_dataset(frame: pd.DataFrame, words=("correct", "incorrect"), filler: str | None = None,
                        show_label: bool = True, show_evidence: bool = False):
    """``datasets.Dataset`` of {"prompt": [system, user], "completion": [assistant verdict lines]}."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": genrm_messages(r, r["rationale"], show_label, show_evidence),
                               "completion": [{"role": "assistant",
                                               "content": verdict_text(r["labels"], words, filler)}]}
                              for r in frame.to_dict("records")])


# ------------------------------------------------------------------------------------------ sources
def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    return df if n is None or n >= len(df) else df.sample(n=n, random_state=seed)


def teacher_rows(df: pd.DataFrame, n: int | None, seed: int = 0, order: str = "grade_first",
                 scale: GradeScale | str = "esci") -> pd.DataFrame:
    d = _sample(df, n, seed).reset_index(drop=True)
    texts = [teacher_rationale(r, order) for r in d.to_dict("records")]
    return d.assign(rationale=texts, labels=[verifier_labels(r, t, scale) for r, t in zip(d.to_dict("records"), texts)],
                    origin="teacher")


def verifier_labels(ex, rationale, scale: GradeScale | str = "esci") -> list[int]:
    """1 / 0 where the verifier decides a step, -1 where it does not (or the step is missing)."""
    return [-1 if np.isnan(v) else int(v) for v in verify(ex, rationale, scale).vector()]


def policy_rows(df: pd.DataFrame, texts: list[str], scale: GradeScale | str = "esci") -> pd.DataFrame:
    """``texts[i]`` is a sampled rationale of ``df.iloc[i]``, labelled by the verifier."""
    d = df.reset_index(drop=True)
    return d.assign(rationale=list(texts), labels=[verifier_labels(r, t, scale) for r, t in
                                                   zip(d.to_dict("records"), texts)], origin="policy")


def complete(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose every step has a 0/1 label."""
    return frame[[min(v) >= 0 for v in frame["labels"]]].reset_index(drop=True)


def decided(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with at least one step labelled 0/1 (trainable once undecided steps are left out of the loss)."""
    return frame[[max(v) >= 0 for v in frame["labels"]]].reset_index(drop=True)


def relabelled(frame: pd.DataFrame, scale: GradeScale | str = "esci") -> pd.DataFrame:
    """Corruption rows with the verifier's labels on their other steps (-1 where it does not decide); the corrupted
    step keeps its 0."""
    labels = [[0 if c == 0 else v for c, v in zip(r["labels"], verifier_labels(r, r["rationale"], scale))]
              for r in frame.to_dict("records")]
    return frame.assign(labels=labels)


def labelled_rows(df: pd.DataFrame, n_teacher: int | None, n_corrupt_per_kind: int, seed: int,
                  order: str = "grade_first", scale: GradeScale | str = "esci", kinds=KINDS) -> pd.DataFrame:
    """Teacher rationales of ``n_teacher`` pairs + ``n_corrupt_per_kind`` corruptions of each kind of ``kinds``."""
    scale = get_scale(scale)
    return pd.concat([teacher_rows(df, n_teacher, seed, order, scale),
                      relabelled(corrupt_frame(df, n_corrupt_per_kind, seed, order, scale, kinds), scale)],
                     ignore_index=True)
