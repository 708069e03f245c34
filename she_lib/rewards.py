"""The outcome reward R of GRPO and SRPO (AGRL's rule-aware reward is she_lib.rules.RuleReward), and the truncation
rule both share."""
from __future__ import annotations

from .labels import GradeScale, get_scale
from .schema import completion_text, parse


def truncated(completion_ids, eos_token_ids, n: int) -> list[bool]:
    """Which of ``n`` completions were cut at the token limit: no end token last among their ids (TRL passes each
    completion's ids up to and including its first end token). All False when either is not given."""
    eos = set(eos_token_ids or ())
    if not eos or completion_ids is None:
        return [False] * n
    return [not len(ids) or int(ids[-1]) not in eos for ids in completion_ids]


class OutcomeReward:
    """R = w_label * 1[parsed grade == human label] + format_weight * 1[well formed] (w = 1 unless ``grade_weights``
    maps labels to weights, :func:`recall_weights`, or is an :class:`OnlineRecallWeights`, updated after every call
    from the rollouts it scored); unparsable output earns 0, and so does a
    completion cut at the token limit when ``eos_token_ids`` are given (TRL passes ``completion_ids``): the
    examiner marks such a rollout wrong (she_lib.examiner), so its outcome and its steps agree, and an answer that
    never ends is not one a deployed judge could return.

    A TRL reward function (``prompts, completions, label, **columns -> list[float]``); GRPO and SRPO share it."""

    def __init__(self, scale: GradeScale | str = "esci", format_weight: float = 0.1, eos_token_ids=(),
                 grade_weights: dict | OnlineRecallWeights | None = None):
        self.scale = get_scale(scale)
        self.grade_weights = (grade_weights if isinstance(grade_weights, OnlineRecallWeights)
                              else dict(grade_weights or {}))
        self.format_weight = format_weight
        self.eos_token_ids = tuple(eos_token_ids or ())
        self.__name__ = "outcome"

    def __call__(self, prompts, completions, label, completion_ids=None, **kwargs) -> list[float]:
        cut = truncated(completion_ids, self.eos_token_ids, len(completions))
        online = isinstance(self.grade_weights, OnlineRecallWeights)
        weights = self.grade_weights.weights() if online else self.grade_weights
        out, right = [], []
        for completion, gold, over in zip(completions, label, cut):
            p = parse(completion_text(completion), self.scale)
            right.append(not over and p.grade == gold)
            out.append(0.0 if over else weights.get(gold, 1.0) * float(right[-1])
                       + self.format_weight * float(p.well_formed))
        if online:
            self.grade_weights.update(label, right)
        return out


class OnlineRecallWeights:
    """:func:`recall_weights` kept at the current policy: w_g = min(max_weight, max_c r_c / r_g), where r_g is an
    exponential moving average of the rollouts' accuracy on prompts labelled g, r_g <- m r_g + (1 - m) acc_g(batch)
    after each batch that holds such prompts, starting at the prompt set's mean SFT pass rate pbar_g. Why: 1 / recall_g
    is the gradient weight of sum_g log recall_g only at the policy whose recall it is; fixed weights from the SFT
    model keep paying a grade the policy has since learned to over-predict (at lr 1e-4 fixed weights moved the
    argmax from Substitute to Irrelevant). A batch is weighted by the estimate from before it, so its own rewards
    do not set its weights. Each process of a launch keeps its own estimate."""

    def __init__(self, labels, pass_rates, max_weight: float = 10.0, momentum: float = 0.8):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.recall, self.max_weight, self.momentum = grade_means(labels, pass_rates), max_weight, momentum

    def weights(self) -> dict[str, float]:
        return relative_inverse(self.recall, self.max_weight)

    def update(self, labels, right) -> None:
        batch = {}
        for g, ok in zip(labels, right):
            batch.setdefault(g, []).append(float(ok))
        for g, oks in batch.items():
            old = self.recall.get(g, sum(oks) / len(oks))
            self.recall[g] = self.momentum * old + (1 - self.momentum) * sum(oks) / len(oks)


def relative_inverse(means: dict[str, float], max_weight: float) -> dict[str, float]:
    """w_g = min(max_weight, max_c m_c / m_g); a grade with m_g = 0 weighs max_weight."""
    top = max(means.values())
    return {g: min(max_weight, top / m) if m > 0 else max_weight for g, m in means.items()}


def grade_means(labels, values) -> dict[str, float]:
    """The mean of ``values`` per label."""
    frame = {}
    for label, v in zip(labels, values):
        frame.setdefault(label, []).append(float(v))
    return {g: sum(v) / len(v) for g, v in frame.items()}


def recall_weights(labels, pass_rates, max_weight: float = 10.0) -> dict[str, float]:
    """w_g = min(max_weight, max_c pbar_c / pbar_g), pbar_g the mean pass rate (P(gold) under the SFT model) of the
    prompts labelled g: the grade the SFT model recognises best weighs 1, the others in inverse proportion.

    Why: accuracy's expected gradient for a shared bias b_c on grade c is
    sum_g pi_g w_g (1[g = c] q_c^g - q_c^g q_g^g), q_c^g the chance a rollout names c on a g prompt. With w = 1 and a
    policy that recognises one grade best (high q_E^E, low q_g^g elsewhere) it is positive for that grade: sharpening
    onto it raises the sampled policy's expected accuracy and ruins the argmax's macro-F1 (the collapse of every GRPO
    run here; no baseline changes an expected gradient). With w_g = 1 / q_g^g it is the gradient of
    sum_g log recall_g, which falls when any grade's recall does. Group-scaled advantages divide w_g out (a group
    has one label), so these weights need ``scale_rewards`` "batch" or "none"."""
    means = grade_means(labels, pass_rates)
    if any(m <= 0 for m in means.values()):
        raise ValueError(f"recall_weights needs positive mean pass rates, got {means}")
    return relative_inverse(means, max_weight)
