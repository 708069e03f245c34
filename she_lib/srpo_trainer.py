"""The SRPO trainer: TRL's ``GRPOTrainer`` with SRPO's per-token advantages (the formula: she_lib.srpo). The RL
baselines run on the same machinery: vanilla GRPO (TRL's ``GRPOTrainer`` algorithm as is, in
she_lib.prompt_sharing's subclass that runs each group's prompt once in the loss, as this trainer does) and AGRL
(she_lib.agrl's replay on this trainer).

:class:`SRPOTrainer` changes the algorithm in one hook, ``_generate_and_score_completions``: after TRL has generated
and scored a batch, the examiner reads every completion's steps, :func:`she_lib.srpo.step_advantages` and
:func:`she_lib.srpo.token_advantages` replace TRL's advantages. AGRL's replay plugs into the same method through
``prepare_inputs`` / ``adjust_outputs`` callbacks. Three small overrides only record: ``_calculate_rewards`` keeps
the summed rewards for the rollout log (she_lib.rollout_log), ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``
keep the replay state in checkpoints (TRL does the same for its entropy state). With ``sft_weight`` > 0,
``compute_loss`` adds she_lib.sft_anchor's term (the teacher rationale's NLL), whose gold tokens the generation hook
puts in the batch. Every knob is a field of
she_lib.srpo_config.SRPOConfig. Budgets, data, training and resuming of all three methods: she_lib.rl.

Under ``accelerate launch`` a group's rollouts may sit on several processes: step rewards and correctness are
gathered, group statistics computed on the whole batch, then each process keeps its slice (as TRL does for R).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate.utils import gather, gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .examiner import Examiner, HybridConfig
from .labels import GradeScale, get_scale
from .prompt_sharing import SharedPromptGRPOTrainer
from .rollout_log import rollout_record, token_steps
from .schema import STEPS, parse
from .sft_anchor import gold_batch, gold_nll
from .srpo import BASELINES, batch_advantages, decision_credit, step_advantages, token_advantages
from .step_spans import completion_step_spans


class SRPOTrainer(SharedPromptGRPOTrainer):
    """``GRPOTrainer`` (with each group's prompt run once in the loss, she_lib.prompt_sharing) with per-token SRPO
    advantages; ``args`` is an she_lib.srpo_config.SRPOConfig.

    ``examiner`` (an she_lib.examiner.Examiner) gives step rewards; ``replay`` (optional, she_lib.agrl) may rewrite
    the batch before generation and the outputs after scoring. ``rollout_log`` is a JSON-lines path (main process)."""

    def __init__(self, *args, examiner: Examiner | None = None, replay=None, rollout_log: str | Path | None = None,
                 scale: GradeScale | str = "esci", order: str = "grade_first", **kwargs):
        super().__init__(*args, **kwargs)
        self.scale, self.order = get_scale(scale), order  # order: the SFT anchor's teacher rationales
        self.examiner = examiner or Examiner(None, HybridConfig(), self.scale)
        self.replay, self.rollout_log, self._generations = replay, rollout_log, 0

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = (rewards * self.reward_weights.to(rewards.device)).nansum(1)  # all processes
        return rewards

    def _generate_and_score_completions(self, inputs):
        if self.replay is not None:
            inputs = self.replay.prepare_inputs(self, inputs)
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        ids, mask = out["completion_ids"], out["completion_mask"].bool()
        eos = self.processing_class.eos_token_id
        texts, spans, truncated = [], [], []
        for row, m in zip(ids, mask):
            kept = row[m].tolist()
            text, sp = completion_step_spans(kept, self.processing_class, self.scale)
            texts.append(text), spans.append(sp), truncated.append(eos not in kept)
        exam = self.examiner.examine([{**ex, "rationale": t, "truncated": tr}
                                      for ex, t, tr in zip(inputs, texts, truncated)])
        dev = ids.device
        rewards_all = gather(torch.tensor(exam.rewards, dtype=torch.float32, device=dev))
        correct_all = gather(torch.tensor(exam.correct, dtype=torch.bool, device=dev))
        judged_all = gather(torch.tensor(exam.judged(), dtype=torch.bool, device=dev))
        steps_all, code_all = step_advantages(rewards_all, correct_all, g, self.args.kappa_first_error,
                                              self.args.kappa_discriminative, self.args.step_threshold, judged_all)
        lo = self.accelerator.process_index * len(inputs)
        steps, code = steps_all[lo:lo + len(inputs)], code_all[lo:lo + len(inputs)]
        outcome = out["advantages"]
        if self.args.advantage_baseline != "group":
            if self.args.advantage_baseline not in BASELINES:
                raise ValueError(f"advantage_baseline must be one of {BASELINES}, got {self.args.advantage_baseline!r}")
            outcome = batch_advantages(self._last_rewards, self.args.scale_rewards)[lo:lo + len(inputs)].to(outcome)
        decision = decision_credit(steps, judged_all[lo:lo + len(inputs)]) if self.args.decision_credit else None
        adv = token_advantages(outcome, steps.to(outcome.dtype), spans, ids.shape[1], self.args.process_weight,
                               self.args.process_credit, self.args.advantage_clip, decision)
        out["advantages"] = adv
        if self.args.sft_weight:  # the SFT anchor's gold tokens, on the first row of each group
            out["sft_ids"], out["sft_mask"] = gold_batch(inputs, self.processing_class, self.order,
                                                         self.max_completion_length,
                                                         [(lo + i) % g == 0 for i in range(len(inputs))], dev)
        if self.replay is not None:
            out = self.replay.adjust_outputs(self, inputs, out, exam)
        m = self._metrics[mode]
        m["srpo/step_reward"].append(rewards_all.mean().item())
        for k, s in enumerate(STEPS):
            m[f"srpo/step_reward/{s}"].append(rewards_all[:, k].mean().item())
        m["srpo/first_error_steps"].append((code_all == 1).float().sum(1).mean().item())
        m["srpo/discriminative_steps"].append((code_all == 2).float().sum(1).mean().item())
        m["srpo/correct"].append(correct_all.float().mean().item())
        m["srpo/process_abs"].append((adv - outcome.view(-1, 1)).abs()[mask].mean().item() if mask.any() else 0.0)
        self._generations += 1
        every = self.args.rollout_log_every
        if self.rollout_log and every and mode == "train" and (self._generations - 1) % every == 0:
            records = gather_object(self._rollout_records(inputs, texts, ids, mask, spans, exam, steps, code, adv,
                                                          outcome, g, lo))
            if self.accelerator.is_main_process:
                Path(self.rollout_log).parent.mkdir(parents=True, exist_ok=True)
                with open(self.rollout_log, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, plus sft_weight x the gold NLL of the micro-batch / the accumulation steps (she_lib.sft_anchor)."""
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.args.sft_weight or "sft_ids" not in inputs:
            return loss
        with self.accelerator.autocast():
            nll = gold_nll(model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["sft_ids"], inputs["sft_mask"])
        if nll is None:
            return loss
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["sft_anchor/nll"].append(nll.item())
        return loss + self.args.sft_weight * nll / (self.current_gradient_accumulation_steps if mode == "train" else 1)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.replay is not None and self.args.should_save:
            self.replay.save(Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.replay is not None and checkpoint is not None and (Path(checkpoint) / "agrl_replay.json").exists():
            self.replay.load(json.loads((Path(checkpoint) / "agrl_replay.json").read_text()))

    def _rollout_records(self, inputs, texts, ids, mask, spans, exam, steps, code, adv, outcome, g, lo) -> list[dict]:
        """One record of she_lib.rollout_log per rollout of this process."""
        recs = []
        for i, ex in enumerate(inputs):
            kept = ids[i][mask[i]].tolist()
            recs.append(rollout_record(
                step=self.state.global_step, group=(lo + i) // g, rollout=(lo + i) % g, example=ex,
                completion=texts[i], grade=parse(texts[i], self.scale).grade, correct=exam.correct[i],
                outcome_reward=self._last_rewards[lo + i], outcome_advantage=outcome[i],
                step_rewards={"verifier": exam.verifier[i], "genrm": exam.genrm[i], "combined": exam.rewards[i]},
                step_sources=exam.sources[i], step_advantages=steps[i], critical=code[i],
                tokens=[self.processing_class.decode([t], skip_special_tokens=False) for t in kept],
                token_advantages=adv[i][mask[i]], token_steps=token_steps(spans[i], len(kept))))
        return recs
