"""CoT SFT: teach the policy the tagged rationale format with TRL's ``SFTTrainer`` and LoRA.

Each example is a conversational prompt-completion pair: the prompt is the system + user messages of
:func:`she_lib.schema.build_messages`, the completion is one assistant message holding the rationale
(``she_lib.rationales``; the offline teacher's when the frame has no ``rationale`` column). TRL renders
prompt and prompt+completion with the chat template and trains on the completion only
(``completion_only_loss=True``, also TRL's default for prompt-completion data). With x the prompt tokens and
y = (y_1 .. y_T) the assistant tokens (the rationale, then ``<|im_end|>`` and the template's newline)::

    L = -1/N  sum over examples, sum over t = 1..T   log p(y_t | x, y_<t)

N = number of assistant tokens in the (accumulated) batch; prompt and padding tokens have label -100.

Model: ``load_policy(profile)`` without LoRA, with ``dtype="float32"`` on CPU (the cpu profile's
"auto" would load bf16 weights here; fp32 keeps master weights fp32 and ``bf16`` only autocasts),
and ``SFTTrainer(peft_config=policy.lora_config)``: TRL seeds right before it wraps the model, so the
adapter's initialisation is fixed by ``CoTSFTConfig.seed``, and DPO/GRPO can reuse the same path.
With CUDA + unsloth, ``load_policy(training=True)`` returns Unsloth's ``FastLanguageModel`` with LoRA
already on and no ``peft_config`` is passed (not testable here).

``train_sft`` resumes from the last checkpoint in ``runs_dir/name/checkpoints`` (optimizer, scheduler,
RNG and data position included) and writes ``runs_dir/name/``: the adapter + tokenizer (what
:func:`she_lib.evaluate.evaluate_run` loads; evaluate with ``profile.replace(order=...)`` for a
``steps_first`` run), ``train_log.json`` and, last, ``run.json``. A finished run with the same profile
and config is returned as is: transformers 5.17 resumed from the final checkpoint trains one step
past ``max_steps`` (it checks the limit only after a step).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

from .config import Profile, get_profile
from .labels import GradeScale, get_scale
from .rationales import add_teacher_rationales
from .schema import ORDERS, build_messages


@dataclass
class CoTSFTConfig:
    order: str = "grade_first"  # "grade_first" | "steps_first" (of schema.ORDERS)
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4  # LoRA
    per_device_batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_length: int = 512  # prompt + rationale tokens; longer examples are cut at the end
    logging_steps: int = 5
    save_steps: int = 25
    save_total_limit: int | None = 2
    seed: int = 0
    bf16: bool | str = "auto"  # "auto": autocast bf16 on a CPU with fast bf16, on CUDA when supported
    gradient_checkpointing: bool = False  # costs ~25% speed in fp32 on CPU; use it on GPU for memory
    train_limit: int | None = None  # None = the whole train split, else a seeded sample
    eval_limit: int | None = 48  # validation pairs for the eval loss; 0 / None = no evaluation

    @classmethod
    def for_profile(cls, profile: Profile | str, **overrides) -> "CoTSFTConfig":
        """Defaults per profile; a chat is ~310 tokens (prompt ~210, rationale ~100). Measured on the 2-core
        CPU (README): SmolLM2-135M LoRA trains at ~220-240 tok/s in bf16 autocast, ~10 s per step of 8 chats."""
        profile = get_profile(profile)
        base = dict(order=profile.order, max_length=profile.max_seq_length, seed=profile.seed)
        per = {
            # a few steps on the tiny model, fp32 so tests are exact
            "smoke": dict(max_steps=4, per_device_batch_size=4, logging_steps=1, save_steps=2, bf16=False,
                          train_limit=16, eval_limit=8),
            # the 30-minute job: 480 pairs, one epoch = 60 steps of 8 chats (611 s measured, README)
            "cpu": dict(train_limit=480, epochs=1, logging_steps=5, save_steps=20, eval_limit=48),
            # the whole train split, two epochs of effective batch 16
            "cpu-full": dict(epochs=2, grad_accum=2, logging_steps=10, save_steps=100, eval_limit=256),
            "gpu": dict(epochs=2, per_device_batch_size=16, logging_steps=10, save_steps=200, eval_limit=512,
                        gradient_checkpointing=True),
            "colab": dict(epochs=2, per_device_batch_size=8, grad_accum=2, logging_steps=10, save_steps=200,
                          eval_limit=256, gradient_checkpointing=True),
        }.get(profile.name, {})
        return cls(**{**base, **per, **overrides})


# ------------------------------------------------------------------------------------------- data
def build_sft_dataset(df: pd.DataFrame, scale: GradeScale | str, order: str = "grade_first"):
    """``datasets.Dataset`` of {"prompt": [system, user], "completion": [assistant rationale]}."""
    from datasets import Dataset

    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    scale = get_scale(scale) if isinstance(scale, str) else scale
    if "rationale" not in df.columns:
        df = add_teacher_rationales(df, order)
    rows = [{"prompt": build_messages(r, scale, order),
             "completion": [{"role": "assistant", "content": r["rationale"]}]} for r in df.to_dict("records")]
    return Dataset.from_list(rows)


def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    return df if not n or n >= len(df) else df.sample(n=n, random_state=seed).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- train
def _precision(bf16: bool | str) -> tuple[bool, bool]:
    """(bf16, fp16) mixed-precision flags for the trainer; "auto" follows ``modeling.resolve_dtype``
    (bf16 on CUDA with bf16 support, else fp16 (a T4); bf16 on a CPU with fast bf16; else fp32)."""
    if bf16 != "auto":
        return bool(bf16), False
    from .modeling import resolve_dtype

    dtype = resolve_dtype("auto")
    return dtype == torch.bfloat16, dtype == torch.float16


def sft_args(config: CoTSFTConfig, output_dir: str | Path, has_eval: bool):
    """The ``trl.SFTConfig`` of a run (TRL's own defaults differ on CPU: bf16 and checkpointing on)."""
    from trl import SFTConfig

    bf16, fp16 = _precision(config.bf16)
    return SFTConfig(
        output_dir=str(output_dir), report_to="none", use_cpu=not torch.cuda.is_available(),
        bf16=bf16, fp16=fp16, gradient_checkpointing=config.gradient_checkpointing,
        num_train_epochs=config.epochs, max_steps=config.max_steps, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.grad_accum, warmup_steps=config.warmup_ratio,  # < 1: a fraction
        lr_scheduler_type=config.lr_scheduler, weight_decay=config.weight_decay, max_length=config.max_length,
        packing=False,  # padding beat packing and padding-free for short chats on the 2-core CPU
        completion_only_loss=True, logging_steps=config.logging_steps, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=config.save_total_limit, seed=config.seed,
        eval_strategy="steps" if has_eval else "no", eval_steps=config.save_steps,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0)


class _Meter(TrainerCallback):
    """Wall time and non-padding tokens of this session's training loop (a resumed run counts its own)."""

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.tokens0 = time.time(), state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kw):
        self.seconds, self.tokens = time.time() - self.t0, state.num_input_tokens_seen - self.tokens0


def sft_trainer(profile: Profile, config: CoTSFTConfig, train_ds, output_dir: str | Path, eval_ds=None,
                callbacks: list | None = None):
    """The ``SFTTrainer`` of a run: model per profile, LoRA, the CPU fallback for TRL's fused LM head."""
    from trl import SFTTrainer

    from .modeling import load_policy, unsloth_available
    from .trl_compat import ensure_trl_cpu_support

    if unsloth_available(profile):  # CUDA + unsloth: FastLanguageModel with LoRA already on (untested here)
        policy, peft_config = load_policy(profile, training=True), None
    else:  # fp32 weights on CPU (the trainer autocasts to bf16); TRL seeds, then adds the LoRA adapter
        policy = load_policy(profile if torch.cuda.is_available() else profile.replace(dtype="float32"))
        peft_config = policy.lora_config
    ensure_trl_cpu_support()  # before the trainer is built: no Triton on CPU
    return SFTTrainer(model=policy.model, args=sft_args(config, output_dir, eval_ds is not None),
                      train_dataset=train_ds, eval_dataset=eval_ds, processing_class=policy.tokenizer,
                      peft_config=peft_config, callbacks=callbacks)


def _finished(run: Path, profile: Profile, config: CoTSFTConfig) -> bool:
    """``run`` holds a run of this profile and config that reached its last step (not one stopped early)."""
    if not (run / "run.json").exists():
        return False
    info = json.loads((run / "run.json").read_text())
    return bool(info.get("finished")) and info.get("profile") == profile.name and \
        info.get("config") == json.loads(json.dumps(asdict(config)))


def train_sft(profile: Profile, config: CoTSFTConfig | None = None, splits: dict | None = None,
              name: str = "sft", resume: bool = True, callbacks: list | None = None) -> Path:
    """LoRA CoT SFT of the profile's model; returns the run folder ``runs_dir/name``."""
    from transformers.trainer_utils import get_last_checkpoint

    from .data import load_splits
    from .modeling import unsloth_available

    config = config or CoTSFTConfig.for_profile(profile)
    run = Path(profile.runs_dir) / name
    if resume and _finished(run, profile, config):
        return run  # a re-run notebook reuses the run (resuming at the end, transformers would train a step more)
    splits = splits if splits is not None else load_splits(profile)
    scale = get_scale(profile.grade_scale)
    train_ds = build_sft_dataset(_sample(splits["train"], config.train_limit, config.seed), scale, config.order)
    eval_ds = None
    if config.eval_limit and len(splits.get("validation", ())):
        eval_ds = build_sft_dataset(_sample(splits["validation"], config.eval_limit, config.seed), scale, config.order)

    (run / "run.json").unlink(missing_ok=True)  # the folder holds no finished run until training ends
    for stale in run.glob("predictions_*.jsonl"):  # evaluation caches of an earlier adapter
        stale.unlink()
    ckpt_dir = run / "checkpoints"
    last = get_last_checkpoint(str(ckpt_dir)) if resume and ckpt_dir.is_dir() else None
    meter = _Meter()
    trainer = sft_trainer(profile, config, train_ds, ckpt_dir, eval_ds, [meter, *(callbacks or [])])
    trainer.train(resume_from_checkpoint=last)

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    final_eval = None
    if eval_ds is not None:  # the validation loss at the last step
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        if not evals or evals[-1]["step"] != trainer.state.global_step:
            trainer.evaluate()
            evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        final_eval = evals[-1]["eval_loss"]

    run.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(run)  # the LoRA adapter only
    trainer.processing_class.save_pretrained(run)
    (run / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    info = {"kind": "sft", "profile": profile.name, "order": config.order, "config": asdict(config),
            "train_examples": len(train_ds), "eval_examples": len(eval_ds) if eval_ds is not None else 0,
            "global_step": trainer.state.global_step, "max_steps": trainer.state.max_steps,
            "finished": trainer.state.global_step >= trainer.state.max_steps,
            "resumed_from": Path(last).name if last else None,
            "train_loss": losses[-1] if losses else None, "eval_loss": final_eval,
            "seconds": round(meter.seconds, 1), "tokens_per_second": round(meter.tokens / max(meter.seconds, 1e-9), 1),
            "backend": "unsloth" if unsloth_available(profile) else "transformers",
            "bf16": trainer.args.bf16, "fp16": trainer.args.fp16}
    (run / "run.json").write_text(json.dumps(info, indent=2))
    return run



def main(argv=None) -> int:
    """``python -m she_lib.sft --profile cpu [--order steps_first] [--name sft] [--evaluate first_token]``"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m she_lib.sft", description="LoRA CoT SFT (resumes a stopped run)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--order", choices=ORDERS, default=None)
    ap.add_argument("--name", default="sft")
    ap.add_argument("--evaluate", nargs="*", default=[], choices=["generate", "first_token"],
                    help="then score the run on the profile's evaluation split")
    args = ap.parse_args(argv)
    profile = get_profile(args.profile, **({"order": args.order} if args.order else {}))
    run = train_sft(profile, CoTSFTConfig.for_profile(profile), name=args.name)
    print(json.dumps({k: v for k, v in json.loads((run / "run.json").read_text()).items() if k != "config"}))
    if args.evaluate:
        from .data import load_splits
        from .evaluate import eval_frame, evaluate_run

        for method, m in evaluate_run(run, profile, eval_frame(profile, load_splits(profile)), args.evaluate).items():
            print(method, {k: m[k] for k in ("accuracy", "macro_f1", "macro_f1_ci", "parse_failure_rate")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
