"""SRPO's advantage: GRPO whose token advantages carry step rewards from the hybrid examiner (TaoSR-SHE).

For a group of G rollouts of one prompt, rollout i with outcome reward R_i (she_lib.rewards.OutcomeReward), step
rewards r_{i,k} in [0, 1] for the K = 5 steps of STEPS (she_lib.examiner) and outcome correctness c_i:

    A_out_i   = (R_i - mean_g R) / (std_g R + 1e-4)                          TRL's GRPO advantage, unchanged
    z_{i,k}   = (r_{i,k} - mean(S)) / (std(S) + 1e-4)     S = all G x K step rewards of the group (unbiased std;
                                                          DeepSeekMath process supervision, PAPERS §6.2)
    wrong     = r_{i,k} < step_threshold, right = r_{i,k} >= step_threshold, for *judged* steps only (a missing step
                or an unparsable / over-length rollout gets a default reward, not a verdict: it is never critical)
    first_{i,k} = 1 if not c_i and k is the first wrong step of rollout i (where its error starts)
    disc_{i,k}  = 1 if step k is *discriminative* in the group (some right rollout has it right and some wrong
                  rollout has it wrong) and rollout i's verdict on it agrees with its outcome (right-right or
                  wrong-wrong)
    w_{i,k}   = 1 + kappa_first_error * first_{i,k} + kappa_discriminative * disc_{i,k}
    a_{i,k}   = w_{i,k} * z_{i,k}                                             critical steps count (1 + kappa) x
    P_{i,k}   = a_{i,k}                              process_credit = "step"
              = sum of a_{i,k'} over present steps k' written at or after k   process_credit = "to_go" (default,
                                                                               DeepSeekMath's return-to-go)
    A_{i,t}   = A_out_i + process_weight * P_{i,k(t)}   for a token t inside step k's tagged element
              = A_out_i                                  for every other token (the <grade> tag, the end token)
    A_{i,t}   <- clamp(A_{i,t}, -advantage_clip, advantage_clip)   when advantage_clip is set

Steps are located in the completion's *tokens* (she_lib.step_spans), so the spans hold for any generation backend
(HF ``generate`` or vLLM). The (G*B, T) advantage goes to TRL's ``_compute_loss``, which keeps GRPO's clipping, KL
term and loss types; with ``process_weight = 0`` every token gets A_out_i and SRPO is GRPO exactly (tested on loss
and gradients). The knobs are the fields of she_lib.srpo_config.SRPOConfig; the trainer that applies this formula is
she_lib.srpo_trainer.SRPOTrainer.
"""
from __future__ import annotations

import torch

from .schema import STEPS


def step_advantages(step_rewards: torch.Tensor, correct: torch.Tensor, group_size: int, kappa_first_error: float = 1.0,
                    kappa_discriminative: float = 1.0, step_threshold: float = 0.5,
                    judged: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """a_{i,k} = w_{i,k} z_{i,k} for [N, K] step rewards of N = B x G rollouts in groups of ``group_size`` (module doc);
    also returns the critical code per step (0 none, 1 first error, 2 discriminative; first error wins).
    ``judged`` [N, K] marks steps whose reward is a verdict (not a missing / unparsable / over-length default): only
    judged steps can be critical; every step enters the group's normalisation."""
    n, k = step_rewards.shape
    r = step_rewards.double().view(-1, group_size, k)
    flat = r.reshape(r.shape[0], -1)
    z = (r - flat.mean(1).view(-1, 1, 1)) / (flat.std(1).view(-1, 1, 1) + 1e-4)
    judged = torch.ones_like(r, dtype=torch.bool) if judged is None else judged.bool().view(-1, group_size, k)
    wrong = (r < step_threshold) & judged
    ok = correct.bool().view(-1, group_size, 1)
    right = (r >= step_threshold) & judged
    first = wrong & (wrong.cumsum(2) == 1) & ~ok
    disc_step = (right & ok).any(1, keepdim=True) & (wrong & ~ok).any(1, keepdim=True)
    disc = disc_step & ((right & ok) | (wrong & ~ok))
    w = 1 + kappa_first_error * first + kappa_discriminative * disc
    code = torch.where(first, 1, torch.where(disc, 2, 0))
    return (w * z).view(n, k).to(step_rewards.dtype), code.view(n, k)


def token_advantages(outcome: torch.Tensor, steps: torch.Tensor, spans: list[dict], length: int,
                     process_weight: float = 1.0, process_credit: str = "to_go",
                     advantage_clip: float | None = None) -> torch.Tensor:
    """A_{i,t} of the module doc: [n, length] from outcome [n], step values a [n, K] and token spans per rollout."""
    if process_credit not in ("to_go", "step"):
        raise ValueError(f"process_credit must be 'to_go' or 'step', got {process_credit!r}")
    adv = outcome.view(-1, 1).repeat(1, length).to(steps.dtype)
    for i, sp in enumerate(spans):
        present = sorted(((sp[s][0], sp[s][1], k) for k, s in enumerate(STEPS) if s in sp))
        for j, (a, b, k) in enumerate(present):
            value = steps[i, k] if process_credit == "step" else sum(steps[i, kk] for _, _, kk in present[j:])
            adv[i, a:min(b, length)] += process_weight * value
    return adv.clamp(-advantage_clip, advantage_clip) if advantage_clip is not None else adv
