"""SRPO's config: TRL's ``GRPOConfig`` plus the fields of SRPO's advantage (the formula: she_lib.srpo)."""
from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig


@dataclass
class SRPOConfig(GRPOConfig):
    """TRL's GRPOConfig plus SRPO's advantage fields (each one a symbol of the formula in she_lib.srpo)."""
    process_weight: float = field(default=1.0, metadata={"help": "lambda_p; 0 = vanilla GRPO"})
    kappa_first_error: float = field(default=1.0, metadata={"help": "extra weight of a wrong rollout's first wrong step"})
    kappa_discriminative: float = field(default=1.0, metadata={"help": "extra weight of a discriminative step"})
    step_threshold: float = field(default=0.5, metadata={"help": "a step reward below it reads as a wrong step"})
    process_credit: str = field(default="step", metadata={"help": "'step' (own step) or 'to_go' (own + later steps)"})
    decision_credit: bool = field(default=True, metadata={"help": "the <grade> tokens get the mean step value D_i"})
    advantage_baseline: str = field(default="group", metadata={"help": "'group' (TRL's: R minus its group's mean) "
                                                              "or 'batch' (the step's whole batch; srpo.batch_advantages)"})
    grade_weighting: str = field(default="none", metadata={"help": "'none', 'recall' (the grade reward weighted "
                                                               "by rewards.recall_weights of the SFT model) or "
                                                               "'recall_online' (rewards.OnlineRecallWeights, kept "
                                                               "at the current policy); needs scale_rewards batch "
                                                               "or none"})
    grade_weight_max: float = field(default=10.0, metadata={"help": "cap of a recall weight"})
    grade_weight_momentum: float = field(default=0.8, metadata={"help": "'recall_online': the moving average's "
                                                                "momentum m over batches"})
    advantage_clip: float | None = field(default=None, metadata={"help": "clamp token advantages to +-clip"})
    share_prompt_prefix: bool = field(default=True, metadata={"help": "run each group's prompt once in the loss "
                                                               "(she_lib.prompt_sharing; speed only)"})
    rollout_engine: str = field(default="auto", metadata={"help": "'shared' (she_lib.rollouts), 'trl' (TRL's own "
                                                          "generate) or 'auto' (shared on a CPU without vLLM)"})
    grade_temperature: float = field(default=1.0, metadata={"help": "exploration temperature T_g of the grade "
                                                            "token (she_lib.rollouts.GradeTemperature; 1 = off)"})
    sft_weight: float = field(default=0.0, metadata={"help": "lambda_sft: the teacher rationale's NLL added to the "
                                                     "loss (she_lib.sft_anchor; 0 = off)"})
    rollout_log_every: int = field(default=1, metadata={"help": "write rollouts.jsonl every k generations (0 = off)"})
