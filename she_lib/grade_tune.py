"""Grade tuning: the top layers of an SFT model retrained on the decision alone, over cached activations.

SFT's loss is ~1% about the grade, and the grade probe (she_lib.grade_probe) refits only a linear head on frozen
states. Grade tuning trains the last ``top_layers`` decoder layers (LoRA on their linear maps) together with a
K-way head on the grade alone, by class-weighted cross-entropy over the train pairs::

    L = sum_i v_{y_i} * -log softmax_k(W h_i + c)_{y_i} / sum_i v_{y_i},      v_k = n / (K n_k)  ("balanced")

with h_i the final-norm state at the answer position (the last token of ``prompt + "<grade>"``, where the
first-token read-out reads its logits). The head starts (``head_init``) as the grade probe of these states
("probe": she_lib.grade_probe.fit_probe on the un-tuned model's h_i, C chosen on validation, the scaler folded in:
W = A / sigma, c = b - (A mu / sigma), so before training the tuned model *is* that probe, tested), or as the LM
head's rows of the grades' first tokens ("lm_head": W_k = E[first token of grade k], c = 0, the first-token
read-out, tested). From the LM head, one epoch left the train loss at chance (1.33 against ln 4 = 1.39) and
validation macro-F1 at 0.21: the logits' scale and the clipped gradient make the head slow to move.

Speed: the bottom ``n - top_layers`` layers are frozen, so their output at every position of every prompt is
computed once and cached in the run (float16, ``inputs_<order>_cut<cut>/``, one ``.npz`` per chunk of pairs, so an
interrupted read resumes); an epoch runs the top layers only. Every prompt opens with the same tokens (the system
part of the chat template, ~90 of ~227 with SmolLM2): that common prefix is cached once and run once per batch at
batch size 1, its keys and values repeated to the batch (:func:`forward_shared`, the training twin of
she_lib.inference's prefix sharing; the same states as the full prompts, tested).

Trained with transformers' ``Trainer``: linear warm-up and decay, bf16 autocast where fast, a checkpoint per epoch
(resumed), the epoch with the best validation macro-F1 kept (``load_best_model_at_end``); per-grade biases are then
tuned on the validation read-out (she_lib.prior_correction). Saved in ``<run>/grade_tune/``: the LoRA adapter and
the head (peft ``modules_to_save``) and ``grade_tune.json`` (config, cut, prefix ids, biases, validation macro-F1).
Every choice is a :class:`GradeTuneConfig` field.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .grade_probe import GradeProbeConfig, fit_probe
from .inference import common_prefix_length, grade_token_ids, repeated_prefix_cache
from .labels import get_scale
from .modeling import cpu_has_fast_bf16, load_run
from .predictions import as_trained, per_query, prediction_cache
from .prior_correction import PriorCorrectionConfig, corrected, index_macro_f1, tune_biases
from .results import score
from .schema import render_prompt

FOLDER, META = "grade_tune", "grade_tune.json"


@dataclass(frozen=True)
class GradeTuneConfig:
    top_layers: int = 6  # the last layers retrained (LoRA); the ones below are frozen and their output cached
    head_init: str = "probe"  # "probe" (the grade probe of the un-tuned states) | "lm_head" (the first-token read-out)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    learning_rate: float = 2e-4
    epochs: float = 3.0
    batch_size: int = 16
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    class_weight: str | None = "balanced"  # None: the data's prior
    tune_biases: bool = True  # per-grade biases tuned on the validation read-out after training
    train_pairs_per_query: int | None = None  # predictions.per_query; None = all
    validation_pairs_per_query: int | None = None
    bf16: bool | str = "auto"  # "auto": autocast where the CPU (or GPU) has fast bf16
    chunk: int = 256  # pairs per cached chunk of bottom-layer outputs
    batch_size_cache: int = 16  # pairs per forward pass while caching
    seed: int = 0


# ------------------------------------------------------------------------------------------ the split model
def _stack(model, first: int, last: int, norm: bool, embeddings: bool):
    """A fresh decoder of ``model``'s class holding layers ``first..last-1`` (renumbered from 0, so a KV cache of
    its own indexes them), its rotary embedding, the final norm if ``norm`` (else identity) and the token embedding
    if ``embeddings`` (else a 1-row stub)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    stub = {"vocab_size": 1, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    cfg = base.config.__class__(**{**base.config.to_dict(), "num_hidden_layers": last - first,
                                   **({} if embeddings else stub)})
    stack = type(base)(cfg).to(next(base.parameters()).dtype)
    for i, layer in enumerate(base.layers[first:last]):
        stack.layers[i].load_state_dict(layer.state_dict())
    stack.norm = base.norm if norm else nn.Identity()
    if embeddings:
        stack.embed_tokens = base.embed_tokens
    return stack.eval()


def forward_shared(stack, prefix: torch.Tensor, suffix: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, S, d] output of ``stack`` at the suffix positions of ``[prefix | suffix_b]`` for each row b: the prefix
    ([P, d] inputs) runs once at batch size 1 with its keys and values cached, the cache is repeated to the batch,
    then the right-padded suffixes ([B, S, d], ``mask`` [B, S] 1 on real tokens) run at positions P.. (a real token
    never sees a pad: pads come after it)."""
    from transformers import DynamicCache

    b, s = mask.shape
    cache = repeated_prefix_cache(stack, b, inputs_embeds=prefix[None]) if len(prefix) else DynamicCache()
    p = len(prefix)
    attn = torch.cat([torch.ones(b, p, dtype=mask.dtype, device=mask.device), mask], dim=1)
    pos = (p + torch.arange(s, device=mask.device)).expand(b, s)
    return stack(inputs_embeds=suffix, attention_mask=attn, position_ids=pos, past_key_values=cache,
                 use_cache=True).last_hidden_state


class GradeTuner(nn.Module):
    """The top layers and the grade head over cached bottom-layer outputs (module docstring)."""

    def __init__(self, top, head_weight: torch.Tensor, prefix: torch.Tensor, class_weights: torch.Tensor):
        super().__init__()
        self.top = top
        self.head = nn.Linear(head_weight.shape[1], head_weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.zero_()
        self.register_buffer("prefix", prefix, persistent=False)
        self.register_buffer("class_weights", class_weights, persistent=False)

    def state(self, suffix, mask):
        """[B, d] the final-norm state at each row's answer position (its last real token)."""
        h = forward_shared(self.top, self.prefix.to(suffix.dtype), suffix, mask)
        return h[torch.arange(len(h)), mask.sum(1) - 1]

    def forward(self, suffix, mask, labels=None):
        logits = self.head(self.state(suffix, mask))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels, weight=self.class_weights)
        return {"loss": loss, "logits": logits}


# ------------------------------------------------------------------------------------------ cached inputs
def _token_rows(tokenizer, profile, df: pd.DataFrame) -> list[list[int]]:
    scale = get_scale(profile.grade_scale)
    return [tokenizer(render_prompt(tokenizer, r, scale, profile.order) + "<grade>", add_special_tokens=False).input_ids
            for r in df.to_dict("records")]


@torch.inference_mode()
def cached_inputs(run: Path, profile, df: pd.DataFrame, cut: int, policy, prefix_ids: list[int],
                  config: GradeTuneConfig) -> list[np.ndarray]:
    """The bottom ``cut`` layers' output ([len_i - P, d] float16, the positions after the common prefix) of every
    pair of ``df`` in ``run``'s prompt, read from the run's cache and computed chunk by chunk where missing (by
    ``policy``, else the run's model, loaded only then)."""
    folder = Path(run) / f"inputs_{profile.order}_cut{cut}"
    have: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("chunk_*.npz")):
        z = np.load(f, allow_pickle=False)
        have.update(zip(z["example_id"].tolist(), np.split(z["states"], np.cumsum(z["lengths"])[:-1])))
    todo = df[~df["example_id"].isin(have)]
    if len(todo):
        if policy is None:
            policy = load_run(run, profile)
        folder.mkdir(parents=True, exist_ok=True)
        bottom = _stack(policy.model, 0, cut, norm=False, embeddings=True)
        emb = bottom.embed_tokens
        pre = emb(torch.tensor(prefix_ids)) if prefix_ids else torch.zeros(0, bottom.config.hidden_size)
        rows, p = _token_rows(policy.tokenizer, profile, todo), len(prefix_ids)
        start = len(list(folder.glob("chunk_*.npz")))
        for n, row in enumerate(rows):
            if row[:p] != prefix_ids or len(row) <= p:
                raise ValueError(f"grade tune: pair {todo['example_id'].iloc[n]!r} does not open with the run's "
                                 f"common prompt prefix ({p} tokens)")
        ids = todo["example_id"].tolist()
        for c in tqdm(range(0, len(rows), config.chunk), desc="bottom-layer outputs"):
            out = []
            for i in range(c, min(c + config.chunk, len(rows)), config.batch_size_cache):
                part = [r[p:] for r in rows[i:i + config.batch_size_cache]]
                s = max(map(len, part))
                x = torch.tensor([r + [0] * (s - len(r)) for r in part])
                mask = torch.tensor([[1] * len(r) + [0] * (s - len(r)) for r in part])
                h = forward_shared(bottom, pre, emb(x), mask).float().numpy().astype(np.float16)
                if not np.isfinite(h).all():
                    raise ValueError(f"grade tune: layer {cut}'s output exceeds float16's range; cut elsewhere")
                out += [h[j, :len(r)] for j, r in enumerate(part)]
            chunk_ids = ids[c:c + config.chunk]
            np.savez(folder / f"chunk_{start:05d}.npz", example_id=np.array(chunk_ids), states=np.concatenate(out),
                     lengths=np.array([len(o) for o in out]))
            start += 1
            have.update(zip(chunk_ids, out))
    return [have[e] for e in df["example_id"]]


def _prefix(run: Path, profile, policy, df: pd.DataFrame, cut: int) -> tuple[list[int], np.ndarray]:
    """The run's common prompt prefix (token ids shared by every pair of ``df``, the train pairs, fixed at first
    use and kept as ``inputs_<order>_cut<cut>/prefix.npz``) and the bottom layers' output on it."""
    path = Path(run) / f"inputs_{profile.order}_cut{cut}" / "prefix.npz"
    if path.exists():
        z = np.load(path)
        return z["ids"].tolist(), z["states"]
    rows = _token_rows(policy.tokenizer, profile, df)
    ids = rows[0][:common_prefix_length(rows)]
    bottom = _stack(policy.model, 0, cut, norm=False, embeddings=True)
    with torch.inference_mode():
        states = bottom(input_ids=torch.tensor([ids])).last_hidden_state[0].float().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array(ids), states=states)
    return ids, states


# ------------------------------------------------------------------------------------------ training
class _Pairs(torch.utils.data.Dataset):
    def __init__(self, states, labels):
        self.states, self.labels = states, labels

    def __len__(self):
        return len(self.states)

    def __getitem__(self, i):
        return {"suffix": self.states[i], "labels": self.labels[i]}


def _collate(items):
    s = max(len(it["suffix"]) for it in items)
    x = np.zeros((len(items), s, items[0]["suffix"].shape[1]), dtype=np.float32)
    mask = np.zeros((len(items), s), dtype=np.int64)
    for j, it in enumerate(items):
        x[j, :len(it["suffix"])], mask[j, :len(it["suffix"])] = it["suffix"], 1
    return {"suffix": torch.from_numpy(x), "mask": torch.from_numpy(mask),
            "labels": torch.tensor([it["labels"] for it in items])}


def build_tuner(policy, cut: int, prefix_states: np.ndarray, words, class_weights=None) -> GradeTuner:
    """The un-tuned :class:`GradeTuner` of ``policy``'s model cut at layer ``cut`` (head = the grade rows of the LM
    head), in fp32 (trained under autocast)."""
    top = _stack(policy.model, cut, policy.model.config.num_hidden_layers, norm=True, embeddings=False).float()
    head = policy.model.get_output_embeddings().weight[grade_token_ids(policy.tokenizer, words)].detach().float()
    w = torch.ones(len(words)) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    return GradeTuner(top, head, torch.from_numpy(np.asarray(prefix_states, dtype=np.float32)), w)


def _batched(fn, states: list[np.ndarray], batch_size: int) -> np.ndarray:
    """fn(suffix, mask) -> [B, k] over ``states`` sorted by length into batches, rows back in input order."""
    order, parts = np.argsort([len(s) for s in states]), []
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            batch = _collate([{"suffix": states[j], "labels": 0} for j in order[i:i + batch_size]])
            parts.append(fn(batch["suffix"], batch["mask"]).float().numpy())
    out = np.zeros((len(states), parts[0].shape[1]))
    out[order] = np.concatenate(parts)
    return out


def probabilities(model, states: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """[n, K] softmax of the tuned model's grade logits on cached inputs."""
    model.eval()
    return _batched(lambda x, m: torch.softmax(model(x, m)["logits"].float(), -1), states, batch_size)


def init_head_from_probe(tuner: GradeTuner, x_tr, y_tr, x_va, y_va, words, class_weight="balanced", batch_size=32):
    """Set ``tuner``'s head to the grade probe (grade_probe.fit_probe, no biases) of its own final states on the
    train pairs, C chosen on validation, the standardisation folded into the weights; returns the probe."""
    tuner.eval()
    h_tr, h_va = (_batched(tuner.state, x, batch_size) for x in (x_tr, x_va))
    probe = fit_probe(h_tr, np.array(words)[y_tr], h_va, np.array(words)[y_va], words,
                      GradeProbeConfig(tune_biases=False, class_weight=class_weight))
    scaler, lr = probe.model[0], probe.model[-1]
    a = lr.coef_ / scaler.scale_  # classes_ are the grade indices 0..K-1 in order (every grade is in train)
    with torch.no_grad():
        tuner.head.weight.copy_(torch.from_numpy(a))
        tuner.head.bias.copy_(torch.from_numpy(lr.intercept_ - a @ scaler.mean_))
    return probe


def train_grade_tune(run: str | Path, profile, train: pd.DataFrame, validation: pd.DataFrame,
                     config: GradeTuneConfig | None = None, policy=None):
    """Tune ``run``'s top layers on the grade (module docstring); returns (peft model, meta dict)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Trainer, TrainingArguments

    config, run = config or GradeTuneConfig(), Path(run)
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    profile, train = as_trained(info, profile, per_query(train, config.train_pairs_per_query))
    _, validation = as_trained(info, profile, per_query(validation, config.validation_pairs_per_query))
    words = get_scale(profile.grade_scale).words
    policy = policy or load_run(run, profile)
    n_layers = policy.model.config.num_hidden_layers
    if not 0 < config.top_layers <= n_layers:
        raise ValueError(f"grade tune: top_layers {config.top_layers} not in 1..{n_layers}")
    cut = n_layers - config.top_layers
    prefix_ids, prefix_states = _prefix(run, profile, policy, train, cut)
    x_tr, x_va = (cached_inputs(run, profile, d, cut, policy, prefix_ids, config) for d in (train, validation))
    y_tr, y_va = (np.array([words.index(v) for v in d["label"]]) for d in (train, validation))
    missing = sorted(set(range(len(words))) - set(y_tr.tolist()))
    if missing:
        raise ValueError(f"grade tune: no train pair of grade(s) {[words[k] for k in missing]}")
    counts = np.bincount(y_tr, minlength=len(words))
    weights = len(y_tr) / (len(words) * counts) if config.class_weight == "balanced" else None
    torch.manual_seed(config.seed)
    tuner = build_tuner(policy, cut, prefix_states, words, weights)
    out = run / FOLDER
    init = {}
    if config.head_init == "probe":
        probe = init_head_from_probe(tuner, x_tr, y_tr, x_va, y_va, words, config.class_weight)
        init = dict(probe_c=probe.c, probe_validation_macro_f1=probe.validation_macro_f1)
    elif config.head_init != "lm_head":
        raise ValueError(f"grade tune: head_init {config.head_init!r} is not 'probe' or 'lm_head'")
    if (out / "start.json").exists() and json.loads((out / "start.json").read_text()) != asdict(config):
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # checkpoints of another config are not resumed
    out.mkdir(parents=True, exist_ok=True)
    (out / "start.json").write_text(json.dumps(asdict(config)))
    model = get_peft_model(tuner, LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules), modules_to_save=["head"]))
    bf16 = (cpu_has_fast_bf16() or torch.cuda.is_available()) if config.bf16 == "auto" else bool(config.bf16)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=32, learning_rate=config.learning_rate, lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay, eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="macro_f1", save_total_limit=2, logging_steps=10,
        bf16=bf16, use_cpu=not torch.cuda.is_available(), report_to=[], remove_unused_columns=False,
        label_names=["labels"], seed=config.seed, dataloader_num_workers=0)

    def metrics(ev):
        return {"macro_f1": index_macro_f1(ev.label_ids, np.asarray(ev.predictions).argmax(-1), len(words))}

    trainer = Trainer(model=model, args=args, train_dataset=_Pairs(x_tr, y_tr), eval_dataset=_Pairs(x_va, y_va),
                      data_collator=_collate, compute_metrics=metrics)
    last = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    trainer.train(resume_from_checkpoint=str(last[-1]) if last else None)
    # read back what was saved: the trained object's forward is wrapped in the trainer's autocast, the read-out is not
    model.save_pretrained(out)
    model = PeftModel.from_pretrained(build_tuner(policy, cut, prefix_states, words), out).eval()
    p_va = probabilities(model, x_va)
    biases = np.zeros(len(words))
    f1 = index_macro_f1(y_va, corrected(p_va, biases), len(words))
    if config.tune_biases:
        biases, f1 = tune_biases(p_va, validation["label"], words, PriorCorrectionConfig())
    meta = dict(config=asdict(config), cut=cut, head_init=init, prefix_ids=prefix_ids, words=list(words),
                biases=biases.tolist(), validation_macro_f1=float(f1), log=trainer.state.log_history,
                order=profile.order)
    (out / META).write_text(json.dumps(meta, indent=1))
    return model, meta


def load_tuned(run: str | Path, profile, policy=None):
    """(tuned model, meta) of ``run``'s grade tuning, read back from ``<run>/grade_tune/``."""
    from peft import PeftModel

    run = Path(run)
    meta = json.loads((run / FOLDER / META).read_text())
    policy = policy or load_run(run, profile.replace(order=meta["order"]))
    prefix = np.load(run / f"inputs_{meta['order']}_cut{meta['cut']}" / "prefix.npz")["states"]
    model = PeftModel.from_pretrained(build_tuner(policy, meta["cut"], prefix, meta["words"]), run / FOLDER)
    return model.eval(), meta


def evaluate_grade_tune(profile, run: str | Path, test: pd.DataFrame, extra=(), tuned=None, policy=None) -> dict:
    """Score ``run``'s tuned grade read-out (biases included) on ``test`` and every ``(profile, frame)`` of ``extra``:
    {split: results.score entry, scoring "grade_tune"}; predictions cached as ``predictions_<split>_tune_<order>``."""
    run = Path(run)
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    if tuned is None:
        policy = policy or load_run(run, profile.replace(order=info.get("order", profile.order)))
        tuned = load_tuned(run, profile, policy)
    model, meta = tuned
    out = {}
    for prof, df in ((profile, test), *extra):
        prof, df = as_trained(info, prof, df)
        x = cached_inputs(run, prof, df, meta["cut"], policy, meta["prefix_ids"], GradeTuneConfig(**{
            k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}))
        preds = pd.DataFrame({"example_id": df["example_id"].to_numpy(),
                              "pred": np.array(meta["words"])[corrected(probabilities(model, x), meta["biases"])]})
        cache = prediction_cache(run, prof, "tune")
        if cache is not None:
            preds.to_json(cache, orient="records", lines=True)
        out[prof.eval_split] = score(df, preds, prof, split=prof.eval_split, model=str(run), scoring="grade_tune",
                                     run=info, tune_cut=meta["cut"], tune_biases=dict(zip(meta["words"], np.round(
                                         meta["biases"], 3).tolist())),
                                     tune_validation_macro_f1=round(meta["validation_macro_f1"], 4))
    return out
