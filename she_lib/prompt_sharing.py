"""GRPO's loss with each group's prompt computed once: :class:`SharedPromptGRPOTrainer`, TRL's ``GRPOTrainer`` with
one hook overridden, ``_get_per_token_logps_and_entropies``.

TRL scores a batch of rollouts by running every row, prompt and completion, through the model. In GRPO the G rows
of a group share their prompt (left-padded to the batch's prompt width ``P``, identical ids and mask), and on this
task the prompt is most of a row (~210 of ~310 tokens). Here each run of consecutive rows with the same prompt
columns runs the prompt but its last token once, at batch size 1, keeps its KV cache
(she_lib.inference.repeated_prefix_cache) and repeats it to the G rows, which then run only their suffix: the last
prompt token and the completion. The suffix keeps TRL's positions (P - 1 onwards: TRL passes no position ids, so a
row's positions count its pads, and so do these) and the full attention mask; its labels are the completion tokens,
scored by TRL's fused LM head as TRL scores them. Log-probabilities, entropies and every gradient equal TRL's up to
float rounding (tests/test_prompt_sharing.py): gradients reach the prompt's LoRA weights through the cached keys and
values. Batches with images, MoE auxiliary losses or gradient checkpointing take TRL's path; so does every batch when
``share_prompt_prefix`` is off (``SRPOConfig``, a speed-only field: it is not part of a run's identity).

A model with a grade head (she_lib.grade_head) is scored through its logits instead of the fused head: TRL's fused
head multiplies the states by ``lm_head.weight`` and never calls the LM head module, so the head's hook would not
run and the grade token's log-probability would be the LM head's, not the one the rollouts were sampled from. There
each row's logits at the completion positions are computed (the hooks swap the grade's), and
log p = log_softmax(z / T)[token], the entropy -sum p log p, as the fused head computes them (:func:`token_logps`).
"""
from __future__ import annotations

import torch
from trl import GRPOTrainer

from .grade_head import grade_head_of
from .inference import repeated_prefix_cache


def prompt_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, p: int) -> list[slice]:
    """Runs of consecutive rows whose first ``p`` columns (ids and mask) are equal, as slices."""
    out, start = [], 0
    for i in range(1, input_ids.size(0) + 1):
        if i == input_ids.size(0) or not (torch.equal(input_ids[i, :p], input_ids[start, :p])
                                          and torch.equal(attention_mask[i, :p], attention_mask[start, :p])):
            out.append(slice(start, i))
            start = i
    return out


def token_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float, entropy: bool):
    """(log softmax(z / T)[target], entropy or None), per position, in float32; ``logits`` [B, L, V] at the positions
    that predict ``targets`` [B, L] (a target < 0 reads token 0; TRL masks those positions)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    out = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return out, (-(logp.exp() * logp).sum(-1) if entropy else None)


class SharedPromptGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose per-token log-probabilities run each group's prompt once (module docstring)."""

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        p = input_ids.size(1) - logits_to_keep  # prompt columns; the completion columns follow
        head = grade_head_of(model) is not None  # scored through the logits (module docstring)
        other = compute_aux_loss or any(v is not None for v in extra.values())  # images, MoE aux loss
        if head and other:
            raise ValueError("a model with a grade head is scored through its logits: no images or MoE aux loss")
        if other or not getattr(self.args, "share_prompt_prefix", False) or p < 2 or self.args.gradient_checkpointing:
            if head:
                return self._logps_through_logits(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                                  compute_entropy)
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy, compute_aux_loss, **extra)
        logps, entropies = [], []
        for rows in prompt_groups(input_ids, attention_mask, p):
            ids, mask = input_ids[rows], attention_mask[rows]
            suffix = ids[:, p - 1:]
            with self.accelerator.autocast():
                cache = repeated_prefix_cache(model, ids.size(0), input_ids=ids[:1, :p - 1],
                                              attention_mask=mask[:1, :p - 1], logits_to_keep=1)
                if head:
                    logits = model(input_ids=suffix, attention_mask=mask, past_key_values=cache).logits
                    lp, ent = token_logps(logits[:, :-1], suffix[:, 1:], self.temperature, compute_entropy)
                else:
                    labels = suffix.masked_fill(mask[:, p - 1:] == 0, -100)
                    labels[:, 0] = -100  # the last prompt token is input only
                    out = model(input_ids=suffix, attention_mask=mask, past_key_values=cache, labels=labels,
                                fused_lm_head=True)
                    lp, ent = out.log_probs, out.entropy
            logps.append(lp[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(ent[:, -logits_to_keep:])
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _logps_through_logits(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy):
        """TRL's per-token log-probabilities and entropies (no prompt sharing) from the model's logits."""
        logps, entropies, step = [], [], batch_size or input_ids.size(0)
        for start in range(0, input_ids.size(0), step):
            ids, mask = input_ids[start:start + step], attention_mask[start:start + step]
            with self.accelerator.autocast():
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1).logits
                lp, ent = token_logps(logits[:, :-1], ids[:, -logits_to_keep:], self.temperature, compute_entropy)
            logps.append(lp)
            if compute_entropy:
                entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None
