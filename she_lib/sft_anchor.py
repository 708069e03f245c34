"""The SFT anchor: the teacher rationale's negative log-likelihood added to the RL loss, against the collapse onto one
grade that RL from the small SFT model shows (docs/results.md). AFRL (arXiv 2602.10006) adds an SFT loss during RL
for this reason; neither the SHE nor the AGRL paper does, so it is a field to ablate (``SRPOConfig.sft_weight``,
``python -m she_lib.rl --sft-weight``), off by default::

    L = L_RL + lambda_sft * NLL_gold,     NLL_gold = -1/N  sum over gold tokens y_t   log p(y_t | x, y_<t)

The gold completion of a prompt x is its teacher rationale (she_lib.rationales.teacher_rationale, the run's reasoning
order, the human grade) followed by the EOS token, as SFT trained on it, cut to ``max_completion_length``. It is scored
on the first rollout row of each group only (the rows of a group share x), so the anchor costs one extra sequence per
prompt. Per micro-batch, NLL_gold is the mean over the gold tokens of the marked rows in it and the term is divided by
the gradient-accumulation steps, as TRL divides its own loss; a micro-batch without a marked row adds nothing. The
log-probabilities come from the model's logits at temperature 1, so with a grade head (she_lib.grade_head) the grade
token is scored by the head's rows: the anchor also supervises the decision."""
from __future__ import annotations

import torch

from .prompt_sharing import token_logps
from .rationales import teacher_rationale


def gold_batch(inputs: list[dict], tokenizer, order: str, max_len: int, first: list[bool],
               device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, L] ids, [B, L] mask): row i holds its gold completion (module docstring) right-padded with the pad token,
    mask 1 on its tokens where ``first[i]``, else an all-zero mask (the row is not scored)."""
    ids = [tokenizer(teacher_rationale(ex, order), add_special_tokens=False).input_ids[:max_len - 1]
           + [tokenizer.eos_token_id] for ex in inputs]
    width = max((len(x) for x in ids), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
    mask = torch.tensor([[int(f)] * len(x) + [0] * (width - len(x)) for x, f in zip(ids, first)], device=device)
    return out, mask


def gold_nll(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, ids: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor | None:
    """Mean NLL of the gold tokens (``mask`` 1) given the left-padded prompts, over the rows with any such token; None
    when there is none. Positions count pads, as TRL's loss forward does (no position ids)."""
    rows = mask.bool().any(-1)
    if not rows.any():
        return None
    x = torch.cat([prompt_ids[rows], ids[rows]], 1)
    m = torch.cat([prompt_mask[rows], mask[rows]], 1)
    logits = model(input_ids=x, attention_mask=m, logits_to_keep=ids.size(1) + 1).logits[:, :-1]
    logp, _ = token_logps(logits, ids[rows], 1.0, False)
    return -logp[mask[rows].bool()].mean()
