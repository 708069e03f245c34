"""An LLM's grade read-outs and where they are kept: predict, cache, read back.

Two read-outs of an LLM's grade:
* ``generate``: decode the rationale greedily and parse its ``<grade>`` (parse failures are counted and
  scored as misses, see she_lib.metrics);
* ``first_token``: the grade probabilities at the answer position in one forward pass (no decoding);
  the prediction is their argmax.

Predictions are appended to a JSON-lines cache chunk by chunk (:func:`prediction_cache` names it after every
setting the predictions depend on), so an interrupted read-out resumes where it stopped. The caches live in the
run folder, outside git; a saved read-out is also archived beside its metrics (:func:`archive_predictions`:
``<results>/predictions/<method>.jsonl.gz``, the grade and its probabilities per pair, or a decoded read-out's
rationale), so the paired tests over queries can be redone from a clone that has the results but not the runs.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Profile
from .data import SPLITS, with_evidence
from .labels import get_scale
from .schema import parse, render_prompt

MODES = ("generate", "first_token")


def cached_predictions(cache: Path | None) -> dict:
    """example_id -> its cached row (none without a cache file)."""
    if not cache or not cache.exists():
        return {}
    rows = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    return {r["example_id"]: r for r in rows}


def predict_llm(model, tokenizer, df: pd.DataFrame, profile: Profile, mode: str = "generate",
                cache: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Predictions of an LLM on ``df``: columns example_id, pred, completion / p_<grade>, seconds (each row's share
    of its chunk's wall time, cached with it, so a resumed or re-read evaluation still reports what it cost)."""
    from .inference import generate, grade_probabilities

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    scale, cache = get_scale(profile.grade_scale), Path(cache) if cache else None
    done = cached_predictions(cache)
    todo = df[~df["example_id"].isin(done)].to_dict("records")
    chunk = profile.eval_batch_size * 4
    for start in range(0, len(todo), chunk):
        rows, t0 = todo[start:start + chunk], time.time()
        prompts = [render_prompt(tokenizer, r, scale, profile.order) for r in rows]
        if mode == "generate":
            texts = generate(model, tokenizer, prompts, profile.eval_batch_size, profile.eval_max_new_tokens,
                             progress=progress, desc=f"generate {start + len(rows)}/{len(todo)}")
            parsed = [parse(t, scale) for t in texts]
            out = [{"example_id": r["example_id"], "completion": t, "pred": p.grade, "well_formed": p.well_formed}
                   for r, t, p in zip(rows, texts, parsed)]
        else:
            probs = grade_probabilities(model, tokenizer, prompts, scale.words, batch_size=profile.eval_batch_size,
                                        progress=progress, fp32=profile.eval_fp32_logits)
            out = [{"example_id": r["example_id"], "pred": scale.words[int(np.argmax(p))],
                    **{f"p_{w}": float(x) for w, x in zip(scale.words, p)}} for r, p in zip(rows, probs)]
        per_row = round((time.time() - t0) / len(rows), 4)  # the chunk's wall time, kept with the cached rows
        done.update({o["example_id"]: {**o, "seconds": per_row} for o in out})
        out = [done[o["example_id"]] for o in out]
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with cache.open("a") as f:
                f.writelines(json.dumps(o) + "\n" for o in out)
    return pd.DataFrame([done[e] for e in df["example_id"]])


def as_trained(info: dict, profile: Profile, df: pd.DataFrame) -> tuple[Profile, pd.DataFrame]:
    """``profile`` and ``df`` as a run whose ``run.json`` is ``info`` was trained: its reasoning order, and the
    evidence line in the prompt (Profile.prompt_evidence) added to or dropped from ``df`` to match."""
    profile = profile.replace(order=info.get("order", profile.order),
                              prompt_evidence=info.get("prompt_evidence", profile.prompt_evidence))
    if profile.prompt_evidence and "evidence" not in df:
        df = with_evidence(df)
    elif not profile.prompt_evidence and "evidence" in df:
        df = df.drop(columns="evidence")
    return profile, df


def prediction_seconds(preds: pd.DataFrame) -> float | None:
    """Wall seconds the predictions took, summed over their chunks (None when a cache predates the timing)."""
    if "seconds" not in preds or preds["seconds"].isna().any():
        return None
    return round(float(preds["seconds"].sum()), 1)


def prediction_file(profile: Profile, mode: str) -> str:
    """Cache name that changes with every setting the predictions depend on (no stale reuse)."""
    tail = f"_{profile.order}_t{profile.eval_max_new_tokens}" if mode == "generate" else f"_{profile.order}"
    return f"predictions_{profile.eval_split}_{mode}{tail}{readout_suffix(profile, mode)}.jsonl"


def readout_suffix(profile: Profile, mode: str) -> str:
    """``_fp32`` for a first-token read-out with fp32 grade logits (Profile.eval_fp32_logits), else empty: it names
    that read-out's cache in the run folder apart from the model-precision one."""
    return "_fp32" if mode == "first_token" and profile.eval_fp32_logits else ""


def prediction_cache(folder: str | Path, profile: Profile, mode: str) -> Path | None:
    """Where predictions of ``mode`` are cached in ``folder``: a split of the profile's data, or a whole external
    folder (``external_<name>``, evaluate.external_set; read-outs are keyed by example_id, so a cache is only ever
    reused for the pairs it holds). None for any other split name."""
    split = profile.eval_split
    return Path(folder) / prediction_file(profile, mode) if split in SPLITS or split.startswith("external_") else None


def method_name(base: str, mode: str) -> str:
    """Method names in metrics.json: ``base`` decodes, ``base_first_token`` scores the first token."""
    return base if mode == "generate" else f"{base}_first_token"


ARCHIVED = ("example_id", "pred", "well_formed", "completion")  # and every p_<grade>: what the paired tests read


def archive_path(results_dir: str | Path, method: str) -> Path:
    return Path(results_dir) / "predictions" / f"{method}.jsonl.gz"


def archive_predictions(results_dir: str | Path, method: str, preds: pd.DataFrame) -> Path:
    """Write ``preds``' columns of :data:`ARCHIVED` and ``p_*`` (a decoded read-out's rationales included) to
    ``results_dir/predictions/<method>.jsonl.gz``, replacing an earlier archive of the method."""
    path = archive_path(results_dir, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = [c for c in preds.columns if c in ARCHIVED or c.startswith("p_")]
    preds[keep].to_json(path, orient="records", lines=True, compression="gzip")
    return path


def archived_predictions(results_dir: str | Path) -> dict[str, Path]:
    """method -> its archived read-out in ``results_dir/predictions/``."""
    return {p.name[: -len(".jsonl.gz")]: p for p in sorted((Path(results_dir) / "predictions").glob("*.jsonl.gz"))}


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A prediction cache, indexed by example_id (the last line of a repeated id wins)."""
    p = pd.read_json(path, lines=True, dtype={"example_id": str})
    return p.drop_duplicates("example_id", keep="last").set_index("example_id")


def per_query(df: pd.DataFrame, k: int | None, seed: int = 0) -> pd.DataFrame:
    """``k`` pairs of every query of ``df`` (all pairs when k is None), the query's pairs taken in the order of
    sha1(f"{seed}:{example_id}"), rows returned in their stored order: a cheaper evaluation set that keeps every
    query, so the bootstrap over queries still applies. A seeded hash, not the stored order: the stored order
    (ASIN order in ESCI) is not random in grade (the first 8 test pairs of each query are 56.9% Exact against
    49.6% in the whole test split)."""
    if not k:
        return df
    rank = df["example_id"].map(lambda e: hashlib.sha1(f"{seed}:{e}".encode()).hexdigest())
    keep = rank.groupby(df["query"].str.lower()).rank(method="first") <= k
    return df[keep]
