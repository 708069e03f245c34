"""CoT SFT: teach the policy the tagged rationale format with TRL's ``SFTTrainer`` and LoRA.

Each example is a conversational prompt-completion pair: the prompt is the system + user messages of
:func:`she_lib.schema.build_messages`, the completion is one assistant message holding the rationale
(``she_lib.rationales``; the offline teacher's when the frame has no ``rationale`` column). TRL renders
prompt and prompt+completion with the chat template and trains on the completion only
(``completion_only_loss=True``, also TRL's default for prompt-completion data). With x the prompt tokens and
y = (y_1 .. y_T) the assistant tokens (the rationale, then ``<|im_end|>`` and the template's newline)::

    L = -1/N  sum over examples, sum over t = 1..T   log p(y_t | x, y_<t)

N = number of assistant tokens in the (accumulated) batch; prompt and padding tokens have label -100.

The decision is one token of ~100, so this loss is ~1% about the grade. With ``grade_weight`` = w != 1,
:class:`CoTSFTTrainer` weights the grade's first token (the token after ``<grade>``, the one the first-token
read-out scores) w times::

    L = sum_t a_t * (-log p(y_t | x, y_<t)) / sum_t a_t,     a_t = w at the grade token, 1 at other assistant tokens

(``token_weights`` = {token id: a} sets a_t = a wherever the target y_t is that token: the GenRM's verdict words,
she_lib.genrm)

and, with ``select_by_grade_f1``, scores the validation split's grade by first token at every evaluation
(``eval_grade_macro_f1`` in the log) and keeps the checkpoint where it is best (the trainer's
``load_best_model_at_end``), so the saved adapter is chosen by the metric the task is judged on, not by loss.

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

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import Profile, get_profile, stage_budget
from .data import load_splits
from .distributed import is_main_process
from .evaluate import report_run
from .inference import repeated_prefix_cache
from .labels import GradeScale, get_scale
from .metrics import classification_metrics
from .modeling import load_policy, resolve_dtype, unsloth_available
from .predictions import predict_llm
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
    eval_steps: int | None = None  # validation loss every this many steps (None = at each save)
    save_total_limit: int | None = 2
    seed: int = 0
    bf16: bool | str = "auto"  # "auto": autocast bf16 on a CPU with fast bf16, on CUDA when supported
    gradient_checkpointing: bool = False  # costs ~25% speed in fp32 on CPU; use it on GPU for memory
    train_limit: int | None = None  # None = the whole train split, else a seeded sample
    eval_limit: int | None = 48  # validation pairs for the eval loss; 0 / None = no evaluation
    class_balance: float = 0.0  # a in [0, 1]: resample grades to shares ~ n_c^(1-a) (balance_classes); 0 = as is
    grade_weight: float = 1.0  # weight of the grade's token in the loss (CoTSFTTrainer); 1 = TRL's plain loss
    select_by_grade_f1: bool = False  # keep the checkpoint with the best validation grade macro-F1 (first token)
    grade_eval_limit: int = 0  # > 0: log eval_grade_macro_f1 on this many validation pairs (seeded) at each evaluation
    share_prompt_prefix: bool = True  # run the batch's common prompt prefix once (on_shared_prefix); not with Unsloth

    @classmethod
    def for_profile(cls, profile: Profile | str, **overrides) -> "CoTSFTConfig":
        """The profile's SFT budget (the ``sft`` entry of she_lib.config.TABLE), then ``overrides``."""
        profile = get_profile(profile)
        base = dict(order=profile.order, max_length=profile.max_seq_length, seed=profile.seed)
        return cls(**{**base, **stage_budget(profile, "sft"), **overrides})


# ------------------------------------------------------------------------------------------- data
def build_sft_dataset(df: pd.DataFrame, scale: GradeScale | str, order: str = "grade_first"):
    """``datasets.Dataset`` of {"prompt": [system, user], "completion": [assistant rationale]}."""
    from datasets import Dataset

    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    scale = get_scale(scale)
    if "rationale" not in df.columns:
        df = add_teacher_rationales(df, order)
    rows = [{"prompt": build_messages(r, scale, order),
             "completion": [{"role": "assistant", "content": r["rationale"]}]} for r in df.to_dict("records")]
    return Dataset.from_list(rows)


def balance_classes(df: pd.DataFrame, a: float, seed: int = 0, column: str = "label") -> pd.DataFrame:
    """Resample ``df`` so that grade c, with n_c of the N rows, gets m_c = round(N * n_c^(1-a) / sum_k n_k^(1-a))
    rows: a = 0 keeps the data as is, a = 1 balances the grades, a = 0.5 is in between (shares ~ sqrt of the
    counts). A grade whose m_c > n_c keeps all its rows plus m_c - n_c drawn with replacement; one whose m_c < n_c
    keeps a sample of m_c without replacement (both seeded). The decision is one token of ~100 in a rationale, so
    the grade prior the model learns is the data's; this is the lever on it that needs no change to the loss."""
    if not 0 <= a <= 1:
        raise ValueError(f"class_balance must be in [0, 1], got {a}")
    if a == 0 or df.empty:
        return df
    counts = df[column].value_counts()
    weights = counts.astype(float) ** (1 - a)
    target = (len(df) * weights / weights.sum()).round().astype(int)
    parts = []
    for grade, rows in df.groupby(column, sort=False):
        m = int(target[grade])
        if m >= len(rows):
            parts += [rows, rows.sample(n=m - len(rows), replace=True, random_state=seed)]
        else:
            parts.append(rows.sample(n=m, random_state=seed))
    return pd.concat(parts).sample(frac=1, random_state=seed).reset_index(drop=True)


def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    return df if not n or n >= len(df) else df.sample(n=n, random_state=seed).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- train
def grade_positions(labels: torch.Tensor, prefix_ids: list[int]) -> torch.Tensor:
    """Bool [batch, length]: the label positions right after an occurrence of ``prefix_ids`` (the ``<grade>`` tag's
    tokens) in the supervised labels: the first token of the grade."""
    k, out = len(prefix_ids), torch.zeros_like(labels, dtype=torch.bool)
    if labels.shape[1] <= k:
        return out
    hit = (labels.unfold(1, k, 1) == torch.tensor(prefix_ids, device=labels.device)).all(-1)  # tag starts at j
    out[:, k:] = hit[:, : labels.shape[1] - k]
    return out & (labels != -100)


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t a_t CE_t / sum_t a_t over supervised positions (label != -100), the next-token shift applied here:
    logits[:, t] predicts labels[:, t + 1]; ``weights`` are per label position (unshifted)."""
    logits, labels, weights = logits[:, :-1].float(), labels[:, 1:], weights[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="none").view_as(labels)
    a = weights * (labels != -100)
    return (a * ce).sum() / a.sum().clamp(min=1e-9)


MIN_SHARED_PREFIX = 16  # tokens; a shorter common prompt prefix is not worth a separate forward pass


def shared_prefix_length(input_ids: torch.Tensor, labels: torch.Tensor) -> int:
    """Tokens every row of the batch opens with, stopping before the first position whose next token is supervised
    (the logit at position t predicts labels[t + 1], so the prefix's logits are never needed)."""
    same = (input_ids == input_ids[:1]).all(0).long().cumprod(0).sum().item()
    supervised = (labels != -100).any(0).nonzero()
    first = supervised[0].item() if len(supervised) else labels.shape[1]
    return int(min(same, first - 1, input_ids.shape[1] - 1))


def on_shared_prefix(model, inputs: dict, p: int) -> dict:
    """``inputs`` of a right-padded batch whose rows share their first ``p`` tokens, rewritten so that the prefix is
    computed once: it runs at batch size 1 with its KV cache kept, the cache is repeated to the batch, and the
    returned inputs hold the suffixes (positions p..), their labels and that cache (gradients flow through the
    cached keys and values; the attention mask stays the full one). Every prompt opens with the chat template's
    system part (~90 of ~320 tokens of an SFT chat with SmolLM2), so a batch of 8 computes ~25% fewer tokens; loss
    and LoRA gradients equal the full batch's (tests/test_sft.py)."""
    ids = inputs["input_ids"]
    b, n = ids.shape
    cache = repeated_prefix_cache(model, b, input_ids=ids[:1, :p], logits_to_keep=1)
    pos = (p + torch.arange(n - p, device=ids.device)).expand(b, n - p)
    return {**inputs, "input_ids": ids[:, p:], "labels": inputs["labels"][:, p:], "position_ids": pos,
            "past_key_values": cache}


def _cot_sft_trainer_class():
    """``CoTSFTTrainer``: TRL's ``SFTTrainer`` with two hooks overridden (module doc): ``compute_loss`` (the grade
    token weighted when ``grade_weight`` != 1) and ``evaluate`` (adds ``eval_grade_macro_f1``). Built lazily so that
    importing she_lib.sft does not import TRL."""
    from trl import SFTTrainer

    class CoTSFTTrainer(SFTTrainer):
        def __init__(self, *args, grade_weight: float = 1.0, grade_eval=None, token_weights=None,
                     share_prompt_prefix: bool = False, **kw):
            super().__init__(*args, **kw)
            self.share_prompt_prefix = share_prompt_prefix
            self.grade_weight, self.grade_eval = grade_weight, grade_eval  # grade_eval: (frame, profile) or None
            self.token_weights = dict(token_weights or {})  # label token id -> its weight (the GenRM's verdicts)
            self._prefix = self.processing_class("<grade>", add_special_tokens=False).input_ids

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.share_prompt_prefix and not return_outputs and "position_ids" not in inputs \
                    and not self.args.gradient_checkpointing:
                p = shared_prefix_length(inputs["input_ids"], inputs["labels"])
                if p >= MIN_SHARED_PREFIX:
                    inputs = on_shared_prefix(model, inputs, p)
            if self.grade_weight == 1.0 and not self.token_weights:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            outputs = model(**{k: v for k, v in inputs.items()
                               if k in ("input_ids", "attention_mask", "position_ids", "past_key_values")})
            weights = torch.where(grade_positions(labels, self._prefix), self.grade_weight, 1.0)
            for token, w in self.token_weights.items():
                weights = torch.where(labels == token, float(w), weights)
            weights = weights.to(outputs.logits.device)
            loss = weighted_token_loss(outputs.logits, labels.to(outputs.logits.device), weights)
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, *args, **kw):
            metrics = super().evaluate(*args, **kw)
            if self.grade_eval is not None:
                f1 = grade_macro_f1(self.model, self.processing_class, *self.grade_eval)
                metrics["eval_grade_macro_f1"] = f1
                self.log({"eval_grade_macro_f1": f1})
            return metrics

    return CoTSFTTrainer


def grade_macro_f1(model, tokenizer, df: pd.DataFrame, profile: Profile) -> float:
    """Macro-F1 of the first-token grade read-out (predictions.predict_llm, no cache) on ``df``; the tokenizer's padding
    side and the model's train mode are put back afterwards."""
    side, training = tokenizer.padding_side, model.training
    preds = predict_llm(model, tokenizer, df, profile.replace(order="grade_first"), "first_token", None, False)
    tokenizer.padding_side = side
    model.train(training)
    return float(classification_metrics(df["label"], preds["pred"], get_scale(profile.grade_scale).words)["macro_f1"])


def _precision(bf16: bool | str) -> tuple[bool, bool]:
    """(bf16, fp16) mixed-precision flags for the trainer; "auto" follows ``modeling.resolve_dtype``
    (bf16 on CUDA with bf16 support, else fp16 (a T4); bf16 on a CPU with fast bf16; else fp32)."""
    if bf16 != "auto":
        return bool(bf16), False
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
        eval_strategy="steps" if has_eval else "no", eval_steps=config.eval_steps or config.save_steps,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
        **(dict(load_best_model_at_end=True, metric_for_best_model="eval_grade_macro_f1", greater_is_better=True)
           if has_eval and config.select_by_grade_f1 else {}))


def sft_trainer(profile: Profile, config: CoTSFTConfig, train_ds, output_dir: str | Path, eval_ds=None,
                callbacks: list | None = None, grade_eval: pd.DataFrame | None = None, token_weights=None):
    """The ``CoTSFTTrainer`` of a run: model per profile, LoRA, the CPU fallback for TRL's fused LM head;
    ``grade_eval`` (validation rows) turns on the first-token grade macro-F1 at each evaluation; ``token_weights``
    ({label token id: weight}) weights every supervised position whose target is that token (0 leaves it out)."""
    from .trl_compat import ensure_trl_cpu_support

    if unsloth_available(profile):  # CUDA + unsloth: FastLanguageModel with LoRA already on (untested here)
        policy, peft_config = load_policy(profile, training=True), None
    else:  # fp32 weights on CPU (the trainer autocasts to bf16); TRL seeds, then adds the LoRA adapter
        policy = load_policy(profile if torch.cuda.is_available() else profile.replace(dtype="float32"))
        peft_config = policy.lora_config
    ensure_trl_cpu_support()  # before the trainer is built: no Triton on CPU
    if config.select_by_grade_f1 and (grade_eval is None or config.order != "grade_first"):
        raise ValueError("select_by_grade_f1 needs validation rows and the grade_first order (a first-token read-out)")
    return _cot_sft_trainer_class()(
        model=policy.model, args=sft_args(config, output_dir, eval_ds is not None), train_dataset=train_ds,
        eval_dataset=eval_ds, processing_class=policy.tokenizer, peft_config=peft_config, callbacks=callbacks,
        grade_weight=config.grade_weight, grade_eval=None if grade_eval is None else (grade_eval, profile),
        token_weights=token_weights,
        share_prompt_prefix=config.share_prompt_prefix and not unsloth_available(profile))


def train_sft(profile: Profile, config: CoTSFTConfig | None = None, splits: dict | None = None,
              name: str = "sft", resume: bool = True, callbacks: list | None = None) -> Path:
    """LoRA CoT SFT of the profile's model; returns the run folder ``runs_dir/name`` (see she_lib.runs)."""
    from . import runs

    config = config or CoTSFTConfig.for_profile(profile)
    run = Path(profile.runs_dir) / name
    if resume and runs.finished(run, profile, config):
        return run
    splits = splits if splits is not None else load_splits(profile)
    scale = get_scale(profile.grade_scale)
    train = balance_classes(_sample(splits["train"], config.train_limit, config.seed), config.class_balance, config.seed)
    train_ds = build_sft_dataset(train, scale, config.order)
    eval_ds = grade_eval = None
    if config.eval_limit and len(splits.get("validation", ())):
        eval_ds = build_sft_dataset(_sample(splits["validation"], config.eval_limit, config.seed), scale, config.order)
        if config.grade_eval_limit > 0 and config.order == "grade_first":
            grade_eval = _sample(splits["validation"], config.grade_eval_limit, config.seed)
    last = runs.start(run, profile, config)
    last = last if resume else None
    meter = runs.Meter()
    trainer = sft_trainer(profile, config, train_ds, run / "checkpoints", eval_ds, [meter, *(callbacks or [])],
                          grade_eval)
    runs.fit(trainer, run, last, meter, profile, config, kind="sft", order=config.order,
             train_examples=len(train_ds), eval_examples=len(eval_ds) if eval_ds is not None else 0,
             backend="unsloth" if unsloth_available(profile) else "transformers")
    return run


def main(argv=None) -> int:
    """``python -m she_lib.sft --profile cpu [--order steps_first] [--name sft] [--evaluate first_token]``"""
    ap = argparse.ArgumentParser(prog="python -m she_lib.sft", description="LoRA CoT SFT (resumes a stopped run)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--order", choices=ORDERS, default=None)
    ap.add_argument("--name", default="sft")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many steps, no validation (a speed measurement, she_lib.pipeline)")
    ap.add_argument("--evaluate", nargs="*", default=[], choices=["generate", "first_token"],
                    help="then score the run on the profile's evaluation split")
    ap.add_argument("--save", action="store_true", help="merge the evaluation into the profile's metrics.json")
    args = ap.parse_args(argv)
    profile = get_profile(args.profile, **({"order": args.order} if args.order else {}))
    limit = dict(max_steps=args.max_steps, eval_limit=None, save_steps=10 ** 6) if args.max_steps else {}
    run = train_sft(profile, CoTSFTConfig.for_profile(profile, **limit), name=args.name)
    if not is_main_process():  # under accelerate launch: rank 0 reports and evaluates, in one process
        return 0
    print(json.dumps({k: v for k, v in json.loads((run / "run.json").read_text()).items() if k != "config"}))
    if args.evaluate:
        report_run(run, profile, args.evaluate, args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
