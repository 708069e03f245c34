"""RL rollouts on a CPU: a ``rollout_func`` for TRL's GRPOTrainer backed by she_lib.inference.generate.

TRL's own path (``GRPOTrainer._generate_single_turn`` with vLLM off) calls HF ``generate`` on the training model:
each of a prompt's G copies is prefilled on its own, and every decoding step runs through the unmerged LoRA layers
(two extra matmuls and their Python calls per linear) in float32. :class:`SharedPrefixRollouts` instead

1. samples from a **generation copy** of the policy: the base model with the LoRA deltas merged,
   W' = W + (alpha / r) B A, cast to ``dtype`` (bfloat16 where the CPU has native bf16: the trainer's ``bf16``), and
   refreshed whenever the optimizer step has changed since the last refresh (as TRL re-syncs vLLM's weights);
2. prefills each distinct prompt once for its G samples and the batch's common prefix once for all its prompts
   (``inference.generate``'s ``share_prefix`` / ``share_common_prefix``), then samples with TRL's settings
   (temperature, top_p, top_k, min_p, repetition_penalty, ``max_completion_length`` and TRL's end tokens).

It returns what TRL's ``rollout_func`` contract asks for: prompt ids (the chat template applied as TRL applies it),
completion ids up to and including the first end token, and ``logprobs`` None, as TRL's own transformers path
returns (no importance-sampling correction is computed from them). The only difference from TRL's path is the
precision of the sampling model; ``tests/test_rollouts.py`` checks that in float32 greedy decoding gives TRL's tokens.
Which engine a run uses is ``SRPOConfig.rollout_engine`` (:func:`rollout_func_for`); the speed of each is
``benchmarks/bench_rl.py``'s.

Exploration of the grade (``SRPOConfig.grade_temperature`` T_g, :class:`GradeTemperature`): the grade word's first
token is sampled from softmax(z / (T_g T)) over the grade words' first tokens only, instead of softmax(z / T) over
the vocabulary; every other token as before. A group can only reinforce a grade one of its rollouts names; under a
weak SFT model the rare grades are seldom named (P(Complement) ~0.01 at the grade token), so their groups carry no
signal. (Exploration alone does not stop GRPO's drift to the majority grade; with she_lib.rewards.recall_weights it
does, docs/results.md.) The loss still
takes log-probabilities at T: the grade is drawn from a tempered behaviour policy and trained without an importance
weight, an exploration choice (as top_p and min_p truncation are), not an unbiased estimate.
"""
from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from .grade_head import base_of, grade_head_of
from .inference import generate, grade_token_ids


def rollout_func_for(args, model, grade_words=None):
    """The ``rollout_func`` a run's config asks for, or None for TRL's own generation: ``rollout_engine`` "shared"
    -> :class:`SharedPrefixRollouts`; "trl" -> None; "auto" -> "shared" on a CPU without vLLM, where
    ``grade_temperature`` != 1 (which needs ``grade_words``, the scale's words) or for a model with a grade head
    (she_lib.grade_head), else "trl"."""
    engine = args.rollout_engine
    explore = getattr(args, "grade_temperature", 1.0) != 1.0  # only this engine applies GradeTemperature
    if engine == "auto":
        plain = not explore and grade_head_of(model) is None  # TRL's generate applies neither
        engine = "trl" if args.use_vllm or (next(model.parameters()).is_cuda and plain) else "shared"
    if engine == "trl":
        if grade_head_of(model) is not None:
            raise ValueError("a model with a grade head needs rollout_engine 'shared' (she_lib.grade_head)")
        if explore:
            raise ValueError("grade_temperature != 1 needs rollout_engine 'shared' (TRL's generate does not apply it)")
        return None
    if engine != "shared":
        raise ValueError(f"rollout_engine must be auto, shared or trl, got {engine!r}")
    if args.use_vllm:
        raise ValueError("rollout_engine 'shared' and use_vllm exclude each other")
    if explore and not grade_words:
        raise ValueError("grade_temperature != 1 needs the grade words (rollout_func_for(..., grade_words))")
    return SharedPrefixRollouts(torch.bfloat16 if args.bf16 else torch.float32, grade_words)


class SharedPrefixRollouts:
    """``rollout_func(prompts, trainer)`` (module docstring). ``prompts`` is TRL's per-process slice, in which
    each prompt appears as G consecutive copies; runs of equal length n are sampled as n samples of one prompt.
    ``grade_words``: the scale's words, for the grade exploration of ``trainer.args.grade_temperature``."""

    def __init__(self, dtype: torch.dtype = torch.float32, grade_words=None):
        self.dtype, self.grade_words, self.copy, self.step = dtype, grade_words, None, None

    def __call__(self, prompts: list, trainer) -> dict:
        tok = trainer.processing_class
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        runs = _runs(texts)
        n = len(runs[0]) if len({len(r) for r in runs}) == 1 else 1
        unique = [texts[r[0]] for r in runs] if n > 1 else texts
        model = self.policy_copy(trainer)
        t_grade = getattr(trainer.args, "grade_temperature", 1.0)
        extra = {} if t_grade == 1.0 else {"logits_processor": LogitsProcessorList([
            GradeTemperature.for_tokenizer(tok, self.grade_words, t_grade)])}
        out = generate(model, tok, unique, batch_size=len(unique), max_new_tokens=trainer.max_completion_length,
                       do_sample=True, temperature=trainer.temperature, top_p=trainer.top_p,
                       num_return_sequences=n, progress=False, return_ids=True, top_k=trainer.top_k,
                       min_p=trainer.min_p, repetition_penalty=trainer.repetition_penalty,
                       eos_token_id=list(trainer.eos_token_ids), **extra)
        completions = [c for group in out for c in group] if n > 1 else out
        return {"prompt_ids": [tok(t, add_special_tokens=False).input_ids for t in texts],
                "completion_ids": completions, "logprobs": None}

    def policy_copy(self, trainer):
        """The generation copy, built on first use and refreshed when ``trainer.state.global_step`` moved."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        if self.copy is None:
            self.copy = _merged_copy(model, self.dtype)
        elif self.step != trainer.state.global_step:
            refresh(self.copy, model)
        self.step = trainer.state.global_step
        return self.copy


class GradeTemperature(LogitsProcessor):
    """At the rows whose last tokens are the grade's opening tag (``tag_ids``, "<grade>"): keeps only the scores of
    the grade words' first tokens (``grade_ids``, she_lib.inference.grade_token_ids) and divides them by
    ``temperature``, so the grade word's first token is drawn from softmax over the grades of z / (T_g T). HF
    ``generate`` runs it before its temperature, top_p, top_k and min_p, which then see the tempered grade scores.
    Without the restriction a tempered step spreads its mass over the 49k-token vocabulary and most rollouts stop
    naming a grade at all (scripts/grade_exploration_probe.py)."""

    def __init__(self, tag_ids: list[int], grade_ids: list[int], temperature: float):
        if temperature <= 0:
            raise ValueError(f"grade_temperature must be > 0, got {temperature}")
        self.tag, self.grades, self.temperature = torch.tensor(tag_ids), torch.tensor(grade_ids), float(temperature)

    @classmethod
    def for_tokenizer(cls, tokenizer, words, temperature: float) -> "GradeTemperature":
        """The processor for ``tokenizer``'s "<grade>" ids and the first tokens of the grade ``words``."""
        return cls(tokenizer("<grade>", add_special_tokens=False).input_ids, grade_token_ids(tokenizer, words),
                   temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = len(self.tag)
        if input_ids.shape[1] < k:
            return scores
        hit = (input_ids[:, -k:] == self.tag.to(input_ids.device)).all(-1)
        if hit.any():
            grades = self.grades.to(scores.device)
            rows = torch.full_like(scores[hit], float("-inf"))
            rows[:, grades] = scores[hit][:, grades] / self.temperature
            scores = scores.clone()
            scores[hit] = rows
        return scores


def _runs(texts: list[str]) -> list[list[int]]:
    """Indices of ``texts`` grouped into runs of consecutive equal texts."""
    runs: list[list[int]] = []
    for i, t in enumerate(texts):
        if runs and texts[runs[-1][0]] == t:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _merged_copy(model, dtype: torch.dtype):
    """A plain (no LoRA) model of ``model``'s architecture in ``dtype`` holding its merged weights. Built from the
    config, not by deep copy: a trainer's model carries a patched ``forward`` (accelerate's autocast wrapper) that a
    deep copy would keep bound to the original."""
    base = base_of(model)
    dup = AutoModelForCausalLM.from_config(base.config, dtype=dtype).to(base.device)
    dup.generation_config = copy.deepcopy(base.generation_config)
    refresh(dup, model, every=True)
    head = grade_head_of(base)
    if head is not None:
        head.head.install(dup)
    return dup.eval()


@torch.no_grad()
def refresh(dup, model, every: bool = False) -> None:
    """Write ``model``'s current weights into its merged copy ``dup``: for each LoRA layer W + the active adapters'
    deltas, then every trainable parameter that is not a LoRA factor (``every``: every parameter) as it is."""
    base = base_of(model)
    params = dict(dup.named_parameters())
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            w = module.base_layer.weight  # already holds the deltas when the layer is merged
            if not module.merged:
                w = w + sum(module.get_delta_weight(a) for a in module.active_adapters)
            params[f"{name}.weight"].copy_(w)
    for name, p in base.named_parameters():  # a LoRA layer's base weight was written merged above
        target = name.replace(".base_layer.", ".")
        if "lora_" in name or name.endswith(".base_layer.weight") or not (every or p.requires_grad):
            continue
        if target in params:
            params[target].copy_(p)
