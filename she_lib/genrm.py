"""Generative stepwise reward model (GenRM): a LoRA model that *writes* a verdict for every step.

It reads query, product and a rationale and writes ``query: correct`` ... ``judge: incorrect`` (format and
data in she_lib.genrm_data). Training is CoT SFT on the assistant turn through ``sft.sft_trainer``.

Scoring is teacher-forced, no decoding: one forward pass over ``prompt + "query: correct\\n...judge:
correct"`` per rationale. With z_c, z_i the logits of the two verdict tokens at the position before step
k's verdict, the step score is::

    s_k = P(correct) = exp(z_c) / (exp(z_c) + exp(z_i))

Because the earlier verdicts are filled with ``correct``, s_k = P(step k correct | x, steps before k
correct): the reading a first-error (critical step) rule needs. The left-padded batch keeps only the
logits of the five verdict positions (``logits_to_keep``), so a batch costs one prefill and no decoding.

The job's data, held-out evaluation and examiner report are in she_lib.genrm_eval; :func:`run_genrm` runs the
whole job (``python -m she_lib.genrm``).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Profile, get_profile, stage_budget
from .corruptions import KINDS, POLICY_KINDS
from .data import load_splits
from .distributed import is_main_process
from .genrm_data import build_genrm_dataset, complete, decided, genrm_messages, verdict_text, verdict_token_ids
from .genrm_eval import build_data, evaluate_genrm, examiner_report, save_genrm_results, undecided_sample
from .inference import head_logits, lm_head_input
from .modeling import load_policy
from .schema import STEPS
from .sft import CoTSFTConfig, sft_trainer


@dataclass
class GenRMConfig:
    """Data, training and scoring of the GenRM. The defaults are cpu-full's budget: rows = 280 teacher + 4 x 140
    corruptions + <= 240 policy samples (2 x 120 prompts; those with at least one decided step) <= 1,080, of ~300
    tokens on average (prompt with the human grade + rationale ~95 + verdict lines 20)."""
    # data: train split to train on, validation split to evaluate on (never test)
    teacher_pairs: int | None = 280  # pairs whose teacher rationale is a row (verifier-labelled); None = all
    corruptions_per_kind: int = 140  # single-step corruptions per kind of corruption_kinds
    corruption_kinds: tuple[str, ...] = KINDS  # + corruptions.POLICY_KINDS: the policy's own errors (--policy-errors)
    policy_prompts: int = 120  # train pairs the policy samples rationales for (verifier-labelled)
    policy_samples: int = 2  # samples per prompt
    policy_run: str = "sft"  # adapter in runs_dir/<policy_run> (train it first: python -m she_lib.sft)
    policy_base_fallback: bool = False  # no such run: sample the base model (True) or use no policy rows (False)
    policy_temperature: float = 1.0
    policy_max_new_tokens: int = 128
    eval_teacher_pairs: int | None = 100
    eval_corruptions_per_kind: int = 50
    eval_policy_prompts: int = 60  # x policy_samples held-out policy rationales
    # training (through she_lib.sft)
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    per_device_batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    max_length: int = 640  # a row is 296 tokens on average, 397 at most (train split): the verdicts are never cut
    logging_steps: int = 5
    save_steps: int = 25
    save_total_limit: int | None = 2
    bf16: bool | str = "auto"
    seed: int = 0
    # prompt and targets (she_lib.genrm_data)
    show_label: bool = True  # the human grade in the prompt (the labels are relative to it)
    show_evidence: bool = False  # the pair's evidence line (terms the record states / misses) in the prompt
    undecided_word: str | None = "unknown"  # written for an undecided step, weight 0; None: drop such rows
    incorrect_weight: float | str = "balanced"  # weight of an ``incorrect`` target; "balanced": n_correct / n_incorrect
    # scoring and evaluation
    verdict_words: tuple[str, str] = ("correct", "incorrect")
    score_batch_size: int = 16
    threshold: float | str = "tuned"  # P(correct) >= threshold reads "correct"; "tuned": best F1 on `incorrect` over
    #   the held-out teacher and corruption steps (validation queries), then applied to the held-out policy steps
    calibration_bins: int = 10

    @classmethod
    def for_profile(cls, profile: Profile | str, **overrides) -> "GenRMConfig":
        """The profile's GenRM budget (the ``genrm`` entry of she_lib.config.TABLE), then ``overrides``."""
        profile = get_profile(profile)
        return cls(**{**dict(seed=profile.seed), **stage_budget(profile, "genrm"), **overrides})

    def sft_config(self, order: str):
        """The ``CoTSFTConfig`` that carries these training fields into ``sft.sft_trainer``."""
        keys = ("epochs", "max_steps", "learning_rate", "per_device_batch_size", "grad_accum", "warmup_ratio",
                "max_length", "logging_steps", "save_steps", "save_total_limit", "seed", "bf16")
        return CoTSFTConfig(order=order, lr_scheduler=self.lr_scheduler, train_limit=None, eval_limit=None,
                            **{k: getattr(self, k) for k in keys})


# ------------------------------------------------------------------------------------------ scorer
class GenRM:
    """Teacher-forced step scorer: ``score(examples, rationales) -> [n, len(STEPS)]`` P(correct).

    P(correct) at a verdict position is softmax(h . w_correct, h . w_incorrect)[0], with h the state the LM head reads
    and both products taken in fp32 (inference.head_logits): a bf16 model's logits are rounded to 0.125 near 16-32,
    which put every score on a coarse grid of logit differences (ties in the AUROC, a threshold that could only fall
    between grid points)."""

    def __init__(self, model, tokenizer, words=("correct", "incorrect"), batch_size: int = 16, show_label: bool = True,
                 show_evidence: bool = False):
        self.model, self.tokenizer, self.batch_size, self.show_label = model, tokenizer, batch_size, show_label
        self.show_evidence = show_evidence
        self.ids = verdict_token_ids(tokenizer, words)
        self.suffix = tokenizer(verdict_text([1] * len(STEPS), words), add_special_tokens=False).input_ids
        self.at = [j for j, t in enumerate(self.suffix) if t == self.ids[0]]  # verdict token positions
        if len(self.at) != len(STEPS):
            raise ValueError(f"found {len(self.at)} verdict tokens in the verdict lines, need {len(STEPS)}")

    @classmethod
    def load(cls, run: str | Path, profile: Profile, config: GenRMConfig | None = None) -> "GenRM":
        """The profile's base model with the adapter of ``run`` merged in."""
        from peft import PeftModel

        config = config or GenRMConfig.for_profile(profile)
        policy = load_policy(profile)
        model = PeftModel.from_pretrained(policy.model, str(run)).merge_and_unload()
        genrm = cls(model, policy.tokenizer, config.verdict_words, config.score_batch_size, config.show_label,
                    config.show_evidence)
        from .runs import stamp

        genrm.source = f"{Path(run).name}_{stamp(run)}"  # names the scorer in the run keys of RL runs using it
        return genrm

    def input_ids(self, ex, rationale) -> list[int]:
        """Prompt tokens (chat template up to the assistant turn) + the all-``correct`` verdict lines."""
        messages = genrm_messages(ex, rationale, self.show_label, self.show_evidence)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids + self.suffix

    @torch.inference_mode()
    def score(self, examples, rationales) -> np.ndarray:
        examples = examples.to_dict("records") if isinstance(examples, pd.DataFrame) else list(examples)
        seqs = [self.input_ids(e, r) for e, r in zip(examples, rationales)]
        out = np.zeros((len(seqs), len(STEPS)))
        self.model.eval()
        device, pad = self.model.device, self.tokenizer.pad_token_id
        order = np.argsort([len(s) for s in seqs], kind="stable")[::-1]
        with lm_head_input(self.model) as seen:
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = max(len(seqs[i]) for i in idx)  # left padding: the verdict lines end every row
                ids = torch.tensor([[pad] * (width - len(seqs[i])) + seqs[i] for i in idx], device=device)
                mask = torch.tensor([[0] * (width - len(seqs[i])) + [1] * len(seqs[i]) for i in idx], device=device)
                keep = torch.tensor([width - len(self.suffix) + j - 1 for j in self.at], device=device)
                self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           logits_to_keep=keep)
                pair = head_logits(self.model, seen.pop("h"), self.ids)  # [b, steps, 2]: the verdict logits in fp32
                out[idx] = torch.softmax(pair, dim=-1)[..., 0].cpu().numpy()
        return out


# ------------------------------------------------------------------------------------------ training
def verdict_weights(rows: pd.DataFrame, config: GenRMConfig, tokenizer) -> dict[int, float]:
    """{verdict token id: loss weight} for CoTSFTTrainer's ``token_weights``: ``correct`` 1, ``incorrect``
    ``incorrect_weight`` ("balanced": n_correct / n_incorrect over the decided steps of ``rows``, so both verdicts
    weigh the same in total), the undecided filler 0 (no target). Other tokens keep weight 1."""
    labels = np.array(rows["labels"].tolist()).reshape(-1)
    n_c, n_i = int((labels == 1).sum()), int((labels == 0).sum())
    w = config.incorrect_weight
    w = (n_c / n_i if n_i else 1.0) if w == "balanced" else float(w)
    words = [*config.verdict_words, *([config.undecided_word] if config.undecided_word else [])]
    ids = verdict_token_ids(tokenizer, words)
    return {ids[0]: 1.0, ids[1]: w, **({ids[2]: 0.0} if config.undecided_word else {})}


def train_genrm(profile: Profile, config: GenRMConfig, train_rows: pd.DataFrame, name: str = "genrm",
                resume: bool = True, callbacks: list | None = None) -> Path:
    """LoRA SFT of the GenRM on ``train_rows`` (rows with a decided step; with ``undecided_word`` None, rows with
    every step decided), the loss on the verdict words weighted by :func:`verdict_weights`; resumable run folder
    ``runs_dir/name``."""
    from . import runs

    run = Path(profile.runs_dir) / name
    train_rows = decided(train_rows) if config.undecided_word else complete(train_rows)
    key = {**asdict(config), "train_rows": len(train_rows)}  # a run is reused for the same config and data size
    if not config.show_evidence:
        del key["show_evidence"]  # its default: runs recorded before the field stay valid
    if resume and runs.finished(run, profile, key):
        return run
    ds = build_genrm_dataset(train_rows, config.verdict_words, config.undecided_word, config.show_label,
                             config.show_evidence)
    last = runs.start(run, profile, key)
    last = last if resume else None
    meter = runs.Meter()
    trainer = sft_trainer(profile, config.sft_config(profile.order), ds, run / "checkpoints", None,
                          [meter, *(callbacks or [])])
    trainer.token_weights = verdict_weights(train_rows, config, trainer.processing_class)
    runs.fit(trainer, run, last, meter, profile, key, kind="genrm", train_rows=len(train_rows),
             rows_by_origin=train_rows["origin"].value_counts().to_dict())
    return run


# ------------------------------------------------------------------------------------------ job
def run_genrm(profile: Profile, config: GenRMConfig | None = None, splits: dict | None = None,
              name: str = "genrm") -> dict:
    """Steps 1-5 of she_lib.genrm_eval's module doc; returns the saved entry and every intermediate."""
    config = config or GenRMConfig.for_profile(profile)
    splits = splits if splits is not None else load_splits(profile)
    train, held, source = build_data(profile, config, splits, name)
    run = train_genrm(profile, config, train, name)
    if not is_main_process():  # under accelerate launch: rank 0 evaluates and writes the results
        return {"run": run, "metrics": None}
    genrm = GenRM.load(run, profile, config)
    metrics, scores = evaluate_genrm(genrm, held, config)
    exam = examiner_report(held, scores, genrm, profile)
    entry = save_genrm_results(profile, metrics, exam, run, source, undecided_sample(held, scores, seed=config.seed))
    return {"metrics": entry, "step_metrics": metrics, "examiner": exam, "run": run, "train": train, "held": held,
            "scores": scores}


# ------------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    """``python -m she_lib.genrm --profile cpu-full [--show-evidence] [--policy-errors] [--epochs 3 --name genrm_3ep]``:
    build data,
    train (resumes), evaluate, write results: to the profile's results folder for the default name, else to
    ``<results>/<name>/`` (a variant never overwrites the main GenRM's report)."""
    ap = argparse.ArgumentParser(prog="python -m she_lib.genrm", description=main.__doc__)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--name", default="genrm")
    ap.add_argument("--show-evidence", action="store_true", help="the pair's evidence line in the GenRM prompt")
    ap.add_argument("--epochs", type=float, help="training epochs (GenRMConfig.epochs; needs --name)")
    ap.add_argument("--policy-errors", action="store_true", help="also the corruptions that copy the policy's own "
                    "errors (corruptions.POLICY_KINDS; needs --name)")
    args = ap.parse_args(argv)
    if (args.epochs is not None or args.policy_errors) and args.name == "genrm":
        ap.error("--epochs and --policy-errors make a variant: give it a --name (the main GenRM keeps the profile's "
                 "settings)")
    profile = get_profile(args.profile)
    if args.name != "genrm":
        profile = profile.replace(results_dir=str(Path(profile.results_dir) / args.name))
    overrides = {**({"show_evidence": True} if args.show_evidence else {}),
                 **({"epochs": args.epochs} if args.epochs is not None else {}),
                 **({"corruption_kinds": KINDS + POLICY_KINDS} if args.policy_errors else {})}
    config = GenRMConfig.for_profile(profile, **overrides)
    out = run_genrm(profile, config, name=args.name)
    if out["metrics"] is not None:  # rank 0 of a launch, or a single process
        print(json.dumps(out["metrics"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
