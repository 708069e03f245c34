"""TaoSR-AGRL's adaptive guided replay, on SRPO's trainer (``SRPOTrainer(replay=AdaptiveReplay(...))``); the
rule-aware reward is she_lib.rules.

Tracking. After every generation each prompt's *unguided* group accuracy acc = (right unguided rollouts) /
(unguided rollouts) is recorded; ``fails[prompt]`` counts its consecutive visits with acc <= ``threshold``
(default 0.25, PAPERS §6.9; 0 = the strict variant) and resets when acc rises above it. Before a prompt's first
visit its history is its pass rate from the RL prompt set (``pass_rate``, she_lib.curriculum: the SFT model's
estimated chance of a right answer) when ``prior_from_pass_rate``: a rate <= ``threshold`` counts as one failed
visit. The choice, and why: the papers replay prompts that failed in earlier epochs, but a CPU-sized run visits each
prompt once (72 of 336 on cpu-full), so history-only replay never fired there; the pool's pass rate is the same
evidence, measured before training.

Trigger and guidance. On a prompt's next visit with fails >= ``patience``, the last m = max(1, round(
``replace_fraction`` * G)) rollouts of its group are generated from a *guided* prompt: the user message plus a
hint with the gold grade and, with ``hint="steps"``, the verdicts the verifier accepts for the two steps it checks
against the label (product type, attributes; taken from the offline teacher). The rest of the group stays unguided,
so the group still measures the policy. Replay happens inside the batch's one generation call (no second
generate, nothing collective), so it works unchanged under ``accelerate launch``.

Off-policy tokens (the choice, and why). A guided rollout y was sampled from pi(.|x, hint), not pi(.|x). It is
trained as a rollout of the *unguided* prompt x: its prompt ids are swapped back to x's before the loss (and the
reference / old log-probs recomputed under x when TRL keeps them), and its token advantages are clamped at 0 from
below (``positive_only``). The gradient on it is then max(A, 0) * grad log pi(y|x): a positive-only, advantage-
weighted imitation of the guided answer. No importance ratio pi(y|x) / pi(y|x, hint) is applied: it is unbounded
exactly where guidance matters (answers the policy would not find alone), and with one optimisation pass per
generation TRL's ratio to the old policy is 1, so GRPO's clipping never engages on these tokens. A guided rollout's
reward enters its group's mean and std like any other (it raises the bar for the unguided ones).

Logged per generation: ``agrl/replay_groups`` (groups guided), ``agrl/guided_correct`` (accuracy of guided rollouts),
``agrl/recovered`` (prompts whose unguided accuracy rose above the threshold after being guided); the per-prompt
history is in the trainer's checkpoints (``agrl_replay.json``) and in :meth:`AdaptiveReplay.report`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .labels import GradeScale, get_scale
from .rationales import teacher_steps
from .schema import build_messages

HINTS = ("grade", "steps")


@dataclass(frozen=True)
class AGRLConfig:
    # unguided group accuracy at or below it is a failed visit: PAPERS §6.9's 0.25 (1 of 4 right still fails). The
    # strict 0 fired once in a 12-step run: the difficulty filter (she_lib.curriculum) drops the prompts the SFT
    # model never gets right, so a group of kept prompts is rarely all wrong
    threshold: float = 0.25
    patience: int = 1  # consecutive failed visits before the next visit is guided
    replace_fraction: float = 0.25  # share of the G rollouts generated with the hint (at least one)
    hint: str = "steps"  # "grade" (gold grade) | "steps" (gold grade + accepted type and attribute verdicts)
    positive_only: bool = True  # guided rollouts keep only positive advantages
    prior_from_pass_rate: bool = True  # an unvisited prompt's pass_rate <= threshold counts as one failed visit


def hint_text(example, hint: str = "steps") -> str:
    """The guidance appended to the user message."""
    if hint not in HINTS:
        raise ValueError(f"unknown hint {hint!r}; choose one of {HINTS}")
    text = f"Hint: the correct grade is {example['label']}."
    if hint == "steps":
        steps = teacher_steps(example)
        text += f" Product-type match: {steps['type'].split(';')[0]}. Attribute match: {steps['attr'].split(';')[0]}."
    return text


def guided_messages(example, scale: GradeScale, order: str, hint: str = "steps") -> list[dict]:
    msgs = build_messages(example, scale, order)
    msgs[-1] = {**msgs[-1], "content": msgs[-1]["content"] + "\n" + hint_text(example, hint)}
    return msgs


class AdaptiveReplay:
    """State and hooks of the replay; :class:`she_lib.srpo_trainer.SRPOTrainer` calls ``prepare_inputs`` before generation
    and ``adjust_outputs`` after scoring."""

    def __init__(self, config: AGRLConfig | None = None, scale: GradeScale | str = "esci", order: str = "grade_first"):
        self.config = config or AGRLConfig()
        if self.config.hint not in HINTS:
            raise ValueError(f"unknown hint {self.config.hint!r}; choose one of {HINTS}")
        self.scale = get_scale(scale)
        self.order = order
        self.fails: dict[str, int] = {}
        self.guided_visits: dict[str, int] = {}
        self.recovered: set[str] = set()
        self.fired = 0

    # ------------------------------------------------------------------------------- trainer hooks
    def n_guided(self, g: int) -> int:
        return max(1, round(self.config.replace_fraction * g)) if g > 1 else 0

    def failed_visits(self, ex: dict) -> int:
        """The prompt's consecutive failed visits; before its first visit, 1 when its pass rate is known and at or
        below the threshold (``prior_from_pass_rate``), else 0."""
        if ex["example_id"] in self.fails:
            return self.fails[ex["example_id"]]
        rate = ex.get("pass_rate") if self.config.prior_from_pass_rate else None
        return int(rate is not None and rate == rate and rate <= self.config.threshold)

    def prepare_inputs(self, trainer, inputs: list[dict]) -> list[dict]:
        """Swap the prompt of the last m rollouts of every flagged prompt's group for the guided prompt."""
        g = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        lo, m, out = trainer.accelerator.process_index * len(inputs), self.n_guided(g), []
        for j, ex in enumerate(inputs):
            flagged = trainer.model.training and self.failed_visits(ex) >= self.config.patience
            if flagged and (lo + j) % g >= g - m:
                out.append({**ex, "prompt": guided_messages(ex, self.scale, self.order, self.config.hint),
                            "guided": True})
            else:
                out.append({**ex, "guided": False})
        return out

    def adjust_outputs(self, trainer, inputs: list[dict], out: dict, exam) -> dict:
        """Guided rows: unguided prompt ids, log-probs recomputed under them, advantages clamped at 0; update state."""
        from accelerate.utils import gather_object

        guided = [j for j, ex in enumerate(inputs) if ex.get("guided")]
        if guided:
            self._unguide(trainer, inputs, out, guided)
            if self.config.positive_only:
                adv = out["advantages"]
                rows = torch.tensor(guided, device=adv.device)
                adv[rows] = adv[rows].clamp(min=0)
        records = gather_object([(ex["example_id"], bool(c), bool(ex.get("guided"))) for ex, c in
                                 zip(inputs, exam.correct)])
        if trainer.model.training:
            self._update(records, trainer)
        return out

    # ---------------------------------------------------------------------------------- internals
    def _unguide(self, trainer, inputs, out, rows):
        tok = trainer.processing_class
        pad = tok.pad_token_id
        ids, mask = out["prompt_ids"], out["prompt_mask"]
        width = ids.shape[1]
        for j in rows:
            plain = tok.apply_chat_template(build_messages(inputs[j], self.scale, self.order), tokenize=True,
                                            add_generation_prompt=True, return_dict=False)
            plain = plain["input_ids"] if isinstance(plain, dict) else list(plain)
            plain = plain[-width:]
            ids[j] = torch.tensor([pad] * (width - len(plain)) + plain, device=ids.device)
            mask[j] = torch.tensor([0] * (width - len(plain)) + [1] * len(plain), device=mask.device)
        for key in ("old_per_token_logps", "ref_per_token_logps"):
            if key in out:
                out[key] = self._logps(trainer, out, rows, out[key], reference=key.startswith("ref"))

    @staticmethod
    def _logps(trainer, out, rows, current, reference: bool):
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)[rows]
        attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)[rows]
        keep = out["completion_ids"].shape[1]
        model = trainer.accelerator.unwrap_model(trainer.model)
        with torch.no_grad():
            if reference and hasattr(model, "disable_adapter"):
                with model.disable_adapter():
                    lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, keep)
            else:
                lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, keep)
        current = current.clone()
        current[rows] = lp
        return current

    def _update(self, records, trainer):
        groups: dict[str, list[tuple[bool, bool]]] = {}
        for eid, correct, guided in records:
            groups.setdefault(eid, []).append((correct, guided))
        fired, guided_right, guided_n, recovered = 0, 0, 0, 0
        for eid, rs in groups.items():
            plain = [c for c, gd in rs if not gd]
            gd = [c for c, g in rs if g]
            if gd:
                fired += 1
                guided_right += sum(gd)
                guided_n += len(gd)
                self.guided_visits[eid] = self.guided_visits.get(eid, 0) + 1
            acc = sum(plain) / len(plain) if plain else 0.0
            if acc <= self.config.threshold:
                self.fails[eid] = self.fails.get(eid, 0) + 1
            else:
                if self.guided_visits.get(eid) and eid not in self.recovered:
                    self.recovered.add(eid)
                    recovered += 1
                self.fails[eid] = 0
        self.fired += fired
        m = trainer._metrics["train"]
        m["agrl/replay_groups"].append(float(fired))
        m["agrl/guided_correct"].append(guided_right / guided_n if guided_n else float("nan"))
        m["agrl/recovered"].append(float(len(self.recovered)))

    # ------------------------------------------------------------------------------ state, report
    def state(self) -> dict:
        return {"fails": self.fails, "guided_visits": self.guided_visits, "recovered": sorted(self.recovered),
                "fired": self.fired, "config": asdict(self.config)}

    def load(self, state: dict) -> None:
        self.fails, self.guided_visits = dict(state["fails"]), dict(state["guided_visits"])
        self.recovered, self.fired = set(state["recovered"]), int(state["fired"])

    def save(self, folder: str | Path) -> None:
        (Path(folder) / "agrl_replay.json").write_text(json.dumps(self.state(), indent=1))

    def report(self) -> dict:
        """How often replay fired, on how many prompts, and how many of them recovered."""
        guided = len(self.guided_visits)
        return {"groups_guided": self.fired, "prompts_guided": guided, "prompts_recovered": len(self.recovered),
                "recovery_rate": len(self.recovered) / guided if guided else None,
                "prompts_failing_now": sum(v >= self.config.patience for v in self.fails.values())}
