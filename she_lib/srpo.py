"""SRPO's advantage: GRPO whose token advantages carry step rewards from the hybrid examiner (TaoSR-SHE).

For a group of G rollouts of one prompt, rollout i with outcome reward R_i (she_lib.rewards.OutcomeReward), step
rewards r_{i,k} in [0, 1] for the K = 5 steps of STEPS (she_lib.examiner), outcome correctness c_i, and
judged_{i,k} = 1 when the reward is a verdict (the verifier's, the GenRM's or their blend; not the default of an
undecided step, of a missing step or of an unparsable / over-length rollout):

    A_out_i   = (R_i - mean_g R) / (std_g R + 1e-4)                          TRL's GRPO advantage, unchanged
              = (R_i - mean_B R) / (std_B R + 1e-4)     advantage_baseline = "batch" (:func:`batch_advantages`)
    z_{i,k}   = (r_{i,k} - mu_k) / (sigma_k + 1e-4) if judged_{i,k}, else 0   mu_k, sigma_k: mean and unbiased std of
                step k's judged rewards in the group (sigma_k = 0 with fewer than two): each step type is compared
                with the same step of the other rollouts (DeepSeekMath's process supervision normalises per group;
                pooling the five step types would penalise a step for being a harder kind of step)
    wrong     = judged and r_{i,k} < step_threshold,  right = judged and r_{i,k} >= step_threshold
    first_{i,k} = 1 if not c_i, k is the first wrong step of rollout i (where its error starts) and z_{i,k} < 0
    disc_{i,k}  = 1 if step k is *discriminative* in the group (some right rollout has it right and some wrong
                  rollout has it wrong), rollout i's verdict on it agrees with its outcome (right-right or
                  wrong-wrong) and z_{i,k} has the verdict's sign (> 0 right, < 0 wrong)
    w_{i,k}   = 1 + kappa_first_error * first_{i,k} + kappa_discriminative * disc_{i,k}
    a_{i,k}   = w_{i,k} * z_{i,k}             critical steps count (1 + kappa) x, only in the direction of their verdict
    P_{i,k}   = a_{i,k}                                        process_credit = "step" (default)
              = sum of a_{i,k'} over present steps k' at or after k in the text   process_credit = "to_go"
                (DeepSeekMath's return-to-go: an early step shares the credit of the later ones)
    D_i       = mean of a_{i,k} over the judged steps of rollout i (0 if none)   the decision's process credit
    A_{i,t}   = A_out_i + process_weight * P_{i,k(t)}   for a token t inside step k's tagged element
              = A_out_i + process_weight * D_i           for a token of the <grade> element (decision_credit)
              = A_out_i                                  for every other token (the end token, text between tags)
    A_{i,t}   <- clamp(A_{i,t}, -advantage_clip, advantage_clip)   when advantage_clip is set

With "step" credit a step identical in every rollout (z = 0 everywhere) gets no process push either way; the
<grade> element, written before the steps in grade_first, gets the steps' mean verdict, so step credit reaches the
decision in both reasoning orders. Steps are located in the completion's *tokens* (she_lib.step_spans), so the spans
hold for any generation backend (HF ``generate`` or vLLM). The (G*B, T) advantage goes to TRL's ``_compute_loss``,
which keeps GRPO's clipping, KL term and loss types; with ``process_weight = 0`` every token gets A_out_i and SRPO is
GRPO exactly (tested on loss and gradients). The knobs are the fields of she_lib.srpo_config.SRPOConfig; the trainer
that applies this formula is she_lib.srpo_trainer.SRPOTrainer.
"""
from __future__ import annotations

import torch

from .schema import GRADE_TAG, STEPS

CREDITS = ("step", "to_go")
BASELINES = ("group", "batch")


def batch_advantages(rewards: torch.Tensor, scale_rewards: str = "batch") -> torch.Tensor:
    """Outcome advantages against the step's whole batch B (every group) instead of each group:
    A_i = (R_i - mean_B R) / (std_B R + 1e-4), std unbiased as TRL's; R_i - mean_B R when ``scale_rewards`` is
    "none". REINFORCE++'s global baseline: in a group whose rollouts are all wrong the group baseline gives every
    advantage ~0, the batch's mean gives them R - mean_B R < 0. A baseline changes the variance of the update, not its
    expectation: it did not stop GRPO's drift to the majority grade here (docs/results.md), whose cause is the reward
    (she_lib.rewards.recall_weights). A rollout with a NaN reward (TRL's unscorable) is left out of the statistics and
    gets 0."""
    ok = ~torch.isnan(rewards)
    r = rewards[ok]
    adv = torch.zeros_like(rewards)
    if r.numel() == 0:
        return adv
    centred = r - r.mean()
    if scale_rewards != "none":
        centred = centred / ((r.std() if r.numel() > 1 else r.new_zeros(())) + 1e-4)
    adv[ok] = centred
    return adv


def step_advantages(step_rewards: torch.Tensor, correct: torch.Tensor, group_size: int, kappa_first_error: float = 1.0,
                    kappa_discriminative: float = 1.0, step_threshold: float = 0.5,
                    judged: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """a_{i,k} = w_{i,k} z_{i,k} for [N, K] step rewards of N = B x G rollouts in groups of ``group_size`` (module doc);
    also returns the critical code per step (0 none, 1 first error, 2 discriminative; first error wins).
    ``judged`` [N, K] marks steps whose reward is a verdict (default: all): only they are normalised and can be
    critical; the others get a = 0."""
    n, k = step_rewards.shape
    r = step_rewards.double().view(-1, group_size, k)
    judged = torch.ones_like(r, dtype=torch.bool) if judged is None else judged.bool().view(-1, group_size, k)
    cnt = judged.sum(1, keepdim=True)
    mean = (r * judged).sum(1, keepdim=True) / cnt.clamp(min=1)
    var = (((r - mean) * judged) ** 2).sum(1, keepdim=True) / (cnt - 1).clamp(min=1)
    z = torch.where(judged, (r - mean) / (var.sqrt() + 1e-4), torch.zeros_like(r))
    wrong = (r < step_threshold) & judged
    right = (r >= step_threshold) & judged
    ok = correct.bool().view(-1, group_size, 1)
    first = wrong & (wrong.cumsum(2) == 1) & ~ok & (z < 0)
    disc_step = (right & ok).any(1, keepdim=True) & (wrong & ~ok).any(1, keepdim=True)
    disc = disc_step & ((right & ok & (z > 0)) | (wrong & ~ok & (z < 0)))
    w = 1 + kappa_first_error * first + kappa_discriminative * disc
    code = torch.where(first, 1, torch.where(disc, 2, 0))
    return (w * z).view(n, k).to(step_rewards.dtype), code.view(n, k)


def decision_credit(steps: torch.Tensor, judged: torch.Tensor | None = None) -> torch.Tensor:
    """D_i of the module doc: [n] mean of each rollout's step values a [n, K] over its judged steps (0 if none)."""
    judged = torch.ones_like(steps, dtype=torch.bool) if judged is None else judged.bool()
    return (steps * judged).sum(1) / judged.sum(1).clamp(min=1)


def token_advantages(outcome: torch.Tensor, steps: torch.Tensor, spans: list[dict], length: int,
                     process_weight: float = 1.0, process_credit: str = "step", advantage_clip: float | None = None,
                     decision: torch.Tensor | None = None) -> torch.Tensor:
    """A_{i,t} of the module doc: [n, length] from outcome [n], step values a [n, K], token spans per rollout (step
    names, and ``grade`` for the <grade> element) and the decision credit D [n] (None: the grade keeps A_out)."""
    if process_credit not in CREDITS:
        raise ValueError(f"process_credit must be one of {CREDITS}, got {process_credit!r}")
    adv = outcome.view(-1, 1).repeat(1, length).to(steps.dtype)
    for i, sp in enumerate(spans):
        present = sorted(((sp[s][0], sp[s][1], k) for k, s in enumerate(STEPS) if s in sp))
        for j, (a, b, k) in enumerate(present):
            value = steps[i, k] if process_credit == "step" else sum(steps[i, kk] for _, _, kk in present[j:])
            adv[i, a:min(b, length)] += process_weight * value
        if decision is not None and GRADE_TAG in sp:
            a, b = sp[GRADE_TAG]
            adv[i, a:min(b, length)] += process_weight * decision[i].to(adv.dtype)
    return adv.clamp(-advantage_clip, advantage_clip) if advantage_clip is not None else adv
