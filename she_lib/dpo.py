"""DPO baseline on pass@N pairs (TaoSR1's recipe): sample from the SFT model, pair good with bad, train DPO.

1. **Sample.** ``n_samples`` rationales per training prompt from the SFT model (she_lib.sampling; a
   sample is *good* when well formed with the human grade).
2. **Pair.** Per prompt: chosen = its first good sample, or the offline teacher's rationale when none
   of the N is good (``teacher_fallback``); rejected = its first bad sample (wrong grade, malformed or
   unparsable). A prompt whose N samples are all good gives no pair (nothing to prefer). Samples are
   i.i.d., so "first" is a random pick. :func:`build_pairs` reports how many pairs came from how many
   prompts and why the others were dropped.
3. **Train.** TRL's ``DPOTrainer`` from the SFT model: the SFT adapter is merged into the base weights
   and a fresh LoRA adapter is trained on top, so the adapter-disabled model, TRL's reference for peft
   models, *is* the SFT policy. With pi the policy, pi_ref the SFT model and (y_w, y_l) a pair::

       L = -log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

   (``loss_type="sigmoid"``; every field of :class:`DPOBaselineConfig` is a knob). The run folder holds
   the DPO adapter with ``run.json`` naming the SFT run it starts from (``init_adapter``, relative to it);
   ``modeling.load_run`` applies both in order.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import Profile, get_profile, stage_budget
from .data import load_splits
from .distributed import is_main_process
from .evaluate import report_run
from .labels import get_scale
from .modeling import load_run
from .rationales import teacher_rationale
from .sampling import pass_at_report, sample_cache, sample_rationales
from .schema import build_messages
from .sft import _precision, _sample


@dataclass
class DPOBaselineConfig:
    # sampling (pass@N)
    n_samples: int = 4
    sample_limit: int | None = 96  # training prompts to sample from (seeded); None = the whole split
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    sample_batch_size: int = 8  # prompts per generate call (x n_samples sequences)
    teacher_fallback: bool = True  # chosen = teacher rationale when no sample is good
    # DPO (TRL DPOConfig)
    beta: float = 0.1
    loss_type: str = "sigmoid"
    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int = -1
    per_device_batch_size: int = 4
    grad_accum: int = 2
    warmup_ratio: float = 0.1
    max_length: int = 512
    logging_steps: int = 1
    save_steps: int = 5
    save_total_limit: int | None = 2
    bf16: bool | str = "auto"
    seed: int = 0

    @classmethod
    def for_profile(cls, profile: Profile | str, **overrides) -> "DPOBaselineConfig":
        """The profile's DPO budget (the ``dpo`` entry of she_lib.config.TABLE), then ``overrides``."""
        profile = get_profile(profile)
        base = dict(max_length=profile.max_seq_length, seed=profile.seed)
        return cls(**{**base, **stage_budget(profile, "dpo"), **overrides})


# ------------------------------------------------------------------------------------------- pairs
def build_pairs(df: pd.DataFrame, samples: pd.DataFrame, profile: Profile,
                teacher_fallback: bool = True) -> tuple[pd.DataFrame, dict]:
    """Pairs {example_id, prompt, chosen, rejected, chosen_source} and a report of the counts."""
    scale = get_scale(profile.grade_scale)
    by_id = {eid: g.sort_values("sample") for eid, g in samples.groupby("example_id")}
    rows, report = [], {"examples": 0, "pairs": 0, "chosen_policy": 0, "chosen_teacher": 0,
                        "skipped_all_good": 0, "skipped_no_good": 0, "rejected_unparsable": 0}
    for ex in df.to_dict("records"):
        g = by_id.get(ex["example_id"])
        if g is None:
            continue
        report["examples"] += 1
        good, bad = g[g["good"]], g[~g["good"]]
        if bad.empty:
            report["skipped_all_good"] += 1
            continue
        if good.empty and not teacher_fallback:
            report["skipped_no_good"] += 1
            continue
        source = "policy" if len(good) else "teacher"
        chosen = good["completion"].iloc[0] if len(good) else teacher_rationale(ex, profile.order)
        rejected = bad.iloc[0]
        report[f"chosen_{source}"] += 1
        report["rejected_unparsable"] += int(pd.isna(rejected["grade"]))
        rows.append({"example_id": ex["example_id"], "prompt": build_messages(ex, scale, profile.order),
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected["completion"]}],
                     "chosen_source": source})
    report["pairs"] = len(rows)
    return pd.DataFrame(rows), report


# ------------------------------------------------------------------------------------------- train
def dpo_args(config: DPOBaselineConfig, output_dir: str | Path):
    from trl import DPOConfig

    bf16, fp16 = _precision(config.bf16)
    return DPOConfig(
        output_dir=str(output_dir), report_to="none", use_cpu=not torch.cuda.is_available(), bf16=bf16, fp16=fp16,
        beta=config.beta, loss_type=[config.loss_type], learning_rate=config.learning_rate,
        num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_batch_size, gradient_accumulation_steps=config.grad_accum,
        warmup_steps=config.warmup_ratio, lr_scheduler_type="cosine", max_length=config.max_length,
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, seed=config.seed, dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding")


def train_dpo(profile: Profile, sft_run: str | Path, config: DPOBaselineConfig | None = None,
              splits: dict | None = None, name: str = "dpo", resume: bool = True, progress: bool = True) -> Path:
    """Sample (resumable), build pairs, train DPO from ``sft_run`` (resumable); returns ``runs_dir/name``."""
    from datasets import Dataset
    from trl import DPOTrainer

    from . import runs
    from .trl_compat import ensure_trl_cpu_support

    config = config or DPOBaselineConfig.for_profile(profile)
    sft_run, run = Path(sft_run), Path(profile.runs_dir) / name
    init = os.path.relpath(sft_run.resolve(), run.resolve())  # relative: the runs folder can move
    key = {"dpo": config.__dict__, "init_adapter": init}
    if resume and runs.finished(run, profile, key):
        return run
    splits = splits if splits is not None else load_splits(profile)
    df = _sample(splits["train"], config.sample_limit, config.seed)

    policy = load_run(sft_run, profile)  # the SFT model, inference dtype
    samples = sample_rationales(policy.model, policy.tokenizer, df, profile, config.n_samples, config.max_new_tokens,
                                config.temperature, config.top_p, config.sample_batch_size, config.seed,
                                cache=sample_cache(profile, sft_run, config.n_samples, config.max_new_tokens,
                                                   config.temperature, config.top_p, config.sample_batch_size,
                                                   config.seed), progress=progress)
    pass_at = pass_at_report(samples)
    pairs, report = build_pairs(df, samples, profile, config.teacher_fallback)
    if is_main_process():
        run.mkdir(parents=True, exist_ok=True)
        (run / "pairs_report.json").write_text(json.dumps({"pass_at": pass_at, "pairs": report}, indent=2))
    if pairs.empty:
        raise ValueError(f"{run}: no DPO pairs from {report['examples']} prompts ({report}); sample more prompts")

    last = runs.start(run, profile, key)
    last = last if resume else None
    model = load_run(sft_run, profile if torch.cuda.is_available() else profile.replace(dtype="float32")).model
    ensure_trl_cpu_support()
    meter = runs.Meter()
    trainer = DPOTrainer(model=model, args=dpo_args(config, run / "checkpoints"),
                         train_dataset=Dataset.from_list(pairs.drop(columns=["example_id", "chosen_source"])
                                                         .to_dict("records")),
                         processing_class=policy.tokenizer, peft_config=policy.lora_config, callbacks=[meter])
    runs.fit(trainer, run, last, meter, profile, key, kind="dpo", order=profile.order, init_adapter=init,
             pass_at=pass_at, pairs=report)
    return run


def main(argv=None) -> int:
    """``python -m she_lib.dpo --profile cpu-full --sft runs/cpu-full/sft [--evaluate first_token generate]``"""
    ap = argparse.ArgumentParser(prog="python -m she_lib.dpo", description="DPO on pass@N pairs (resumable)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--sft", required=True, help="the SFT run folder to sample from and start at")
    ap.add_argument("--name", default="dpo")
    ap.add_argument("--evaluate", nargs="*", default=[], choices=["generate", "first_token"])
    ap.add_argument("--save", action="store_true", help="merge the evaluation into the profile's metrics.json")
    args = ap.parse_args(argv)
    sft_info = json.loads((Path(args.sft) / "run.json").read_text())
    profile = get_profile(args.profile, order=sft_info.get("order", "grade_first"))
    run = train_dpo(profile, args.sft, name=args.name)
    if not is_main_process():  # under accelerate launch: rank 0 reports and evaluates, in one process
        return 0
    info = json.loads((run / "run.json").read_text())
    print(json.dumps({k: info[k] for k in ("pass_at", "pairs", "global_step", "train_loss", "seconds")}, indent=1))
    if args.evaluate:
        report_run(run, profile, args.evaluate, args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
