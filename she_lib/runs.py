"""Run folders: what every trainer of the project (SFT, DPO, GenRM, RL) writes, and how it resumes.

A run lives in ``runs_dir/<name>/``:

* ``checkpoints/checkpoint-<step>/``: the trainer's checkpoints (optimizer, scheduler, RNG, data position);
  :func:`fit` resumes from the last one;
* the final LoRA adapter + tokenizer (``save_pretrained``), ``train_log.json`` (the trainer's log history);
* ``run.json``, written last: kind, profile, config, step counts, losses, seconds, tokens/s. A folder without
  ``run.json`` holds no finished run. A finished run of the same profile and config is reused as is
  (resumed at its end, transformers 5.17 would train one step past ``max_steps``).

Under ``accelerate launch`` every process trains (the trainer's collective calls) but only rank 0 writes the
run folder (she_lib.distributed); the others wait for it, so every rank returns a complete folder.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .distributed import is_main_process, wait_for_everyone


class Meter(TrainerCallback):
    """Wall time and non-padding tokens of this process's training loop (a resumed run counts its own)."""

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.tokens0 = time.time(), state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kw):
        self.seconds, self.tokens = time.time() - self.t0, state.num_input_tokens_seen - self.tokens0


SPEED_ONLY = ("share_prompt_prefix",)  # config fields that change how fast a run trains, not what it learns


def _set_as_list(value):
    """JSON for a set field of a config (e.g. VerifierConfig.filler_words): its sorted items."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"a run's config holds a {type(value).__name__}, which has no JSON form")


def _jsonable(config) -> dict:
    """The config as a run's identity: JSON values, without the SPEED_ONLY fields."""
    d = json.loads(json.dumps(asdict(config) if is_dataclass(config) else config, default=_set_as_list))
    return {k: v for k, v in d.items() if k not in SPEED_ONLY} if isinstance(d, dict) else d


def finished(run: Path, profile, config) -> bool:
    """``run`` holds a finished run of this profile and config (not one stopped early)."""
    path = Path(run) / "run.json"
    if not path.exists():
        return False
    info = json.loads(path.read_text())
    return bool(info.get("finished")) and info.get("profile") == profile.name and info.get("config") == _jsonable(config)


def stamp(run: Path) -> str:
    """A short fingerprint of the model in ``run`` (hash of its ``run.json``; "base" without one): caches of
    samples drawn from a run carry it in their file name, so retraining the run never serves stale samples."""
    path = Path(run) / "run.json"
    return hashlib.sha1(path.read_bytes()).hexdigest()[:10] if path.exists() else "base"


def start(run: Path, profile=None, config=None) -> str | None:
    """Mark ``run`` unfinished, drop evaluation caches of an earlier model, return the checkpoint to resume.

    ``start.json`` records the profile and config the checkpoints belong to; checkpoints of another profile or
    config are deleted (with a message), never resumed: a changed budget starts afresh."""
    run, ckpt = Path(run), Path(run) / "checkpoints"
    key = {"profile": getattr(profile, "name", profile), "config": _jsonable(config) if config is not None else None}
    if is_main_process():
        run.mkdir(parents=True, exist_ok=True)
        (run / "run.json").unlink(missing_ok=True)
        for stale in run.glob("predictions_*.jsonl"):
            stale.unlink()
        marker = run / "start.json"
        if ckpt.is_dir() and (not marker.exists() or json.loads(marker.read_text()) != key):
            print(f"{run}: checkpoints of another profile/config dropped, training starts afresh")
            shutil.rmtree(ckpt)
        marker.write_text(json.dumps(key, indent=1))
    wait_for_everyone()
    return get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None


def fit(trainer, run: Path, last: str | None, meter: Meter, profile, config, **info) -> dict:
    """Train (from ``last`` if given), save adapter + tokenizer + log, write and return ``run.json``."""
    run = Path(run)
    trainer.train(resume_from_checkpoint=last)
    log = trainer.state.log_history
    losses = [e["loss"] for e in log if "loss" in e]
    eval_loss = None
    if trainer.eval_dataset is not None:  # the validation loss at the last step
        evals = [e for e in log if "eval_loss" in e]
        if not evals or evals[-1]["step"] != trainer.state.global_step:
            trainer.evaluate()
            evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        eval_loss = evals[-1]["eval_loss"]
    trainer.save_model(str(run))  # every rank: gathers FSDP / ZeRO-3 shards; rank 0 writes adapter + tokenizer
    if is_main_process():
        (run / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    out = {**info, "profile": profile.name, "prompt_evidence": bool(getattr(profile, "prompt_evidence", False)),
           "config": _jsonable(config),
           "global_step": trainer.state.global_step, "max_steps": trainer.state.max_steps,
           "finished": trainer.state.global_step >= trainer.state.max_steps,
           "resumed_from": Path(last).name if last else None,
           "train_loss": losses[-1] if losses else None, "eval_loss": eval_loss,
           "seconds": round(meter.seconds, 1),
           "tokens_per_second": round(meter.tokens / max(meter.seconds, 1e-9), 1),
           "bf16": trainer.args.bf16, "fp16": trainer.args.fp16}
    if is_main_process():
        (run / "run.json").write_text(json.dumps(out, indent=2))
    wait_for_everyone()
    return out


def export_adapter(run: Path, out: Path, dtype=None) -> Path:
    """Copy a run's LoRA adapter to ``out`` with its weights cast to ``dtype`` (default bf16: half the bytes,
    what ``models/`` ships), plus ``adapter_config.json``, ``run.json``, ``train_log.json`` and the grade probe where
    the run has one (she_lib.grade_probe): a folder that ``python -m she_lib.evaluate --run <out>`` scores like the
    run itself."""
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(run / "adapter_model.safetensors")
    save_file({k: v.to(dtype or torch.bfloat16).contiguous() for k, v in weights.items()},
              out / "adapter_model.safetensors")
    for name in ("adapter_config.json", "run.json", "train_log.json", "grade_probe.joblib"):
        if (run / name).exists():
            (out / name).write_bytes((run / name).read_bytes())
    return out
