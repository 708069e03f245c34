"""SRPO (she_lib.srpo, srpo_trainer, step_spans, rewards): exact advantages on hand-computed groups, token-span
alignment for any generation backend, SRPO with process weight 0 == TRL's GRPO (loss and gradients), and GRPO / SRPO
end to end on the smoke profile."""
import json
import math

import numpy as np
import pytest
import pandas as pd
import torch

from she_lib.labels import get_scale
from she_lib.rationales import teacher_rationale
from she_lib.schema import STEPS, parse
from she_lib.rl import rl_config, train_rl
from she_lib.rewards import OutcomeReward
from she_lib.srpo import batch_advantages, decision_credit, step_advantages, token_advantages
from she_lib.srpo_trainer import SRPOTrainer
from she_lib.step_spans import completion_step_spans, token_char_offsets
from fakes import fake_trainer as _trainer
from callbacks import StopAt

SCALE = get_scale("esci")


# ------------------------------------------------------------------------------------------ the maths
def test_step_advantages_hand_computed_group():
    """G = 4 rollouts, K = 3 steps; rollouts 0 and 2 right, 1 and 3 wrong. Each step type is normalised over the
    same step of the group's rollouts."""
    r = torch.tensor([[1., 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    correct = torch.tensor([True, False, True, False])
    adv, code = step_advantages(r, correct, group_size=4)
    # columns [1,1,1,0], [1,0,1,0], [1,0,0,0]: means .75 / .5 / .25, unbiased stds .5 / sqrt(1/3) / .5
    s0, s1, s2 = 0.5 + 1e-4, math.sqrt(1 / 3) + 1e-4, 0.5 + 1e-4
    z = torch.tensor([[.25 / s0, .5 / s1, .75 / s2], [.25 / s0, -.5 / s1, -.25 / s2],
                      [.25 / s0, .5 / s1, -.25 / s2], [-.75 / s0, -.5 / s1, -.25 / s2]])
    # first errors: rollout 1 at step 1, rollout 3 at step 0 (both z < 0). Every step is discriminative (right
    # rollout 0 has it right, a wrong rollout has it wrong); a rollout's step is weighted when its verdict agrees
    # with its outcome and z has the verdict's sign
    w = torch.tensor([[2., 2, 2], [1, 3, 2], [2, 2, 1], [3, 2, 2]])
    torch.testing.assert_close(adv, w * z, rtol=0, atol=1e-6)
    assert code.tolist() == [[2, 2, 2], [0, 1, 2], [2, 2, 0], [1, 2, 2]]

    # weights are config: with both kappas 0 the step values are the plain z-scores; two groups are independent
    adv0, _ = step_advantages(torch.cat([r, torch.full((4, 3), 0.7)]), torch.cat([correct, correct]), 4, 0.0, 0.0)
    torch.testing.assert_close(adv0[:4], z, rtol=0, atol=1e-6)
    assert torch.equal(adv0[4:], torch.zeros(4, 3))  # a group with equal step rewards has no process signal

    # rollout 3 unparsable or undecided (no verdicts): it gets 0 and leaves the statistics; over rollouts 0-2 column
    # 0 is constant (z = 0), columns 1 and 2 have std sqrt(1/3). It is never critical, so step 0 is no longer
    # discriminative (the only other wrong rollout has it right)
    judged = torch.ones(4, 3, dtype=torch.bool)
    judged[3] = False
    adv_j, code_j = step_advantages(r, correct, 4, judged=judged)
    assert code_j.tolist() == [[0, 2, 2], [0, 1, 2], [0, 2, 0], [0, 0, 0]]
    t = math.sqrt(1 / 3) + 1e-4
    want = torch.tensor([[0., 2 * (1 / 3) / t, 2 * (2 / 3) / t], [0, 3 * (-2 / 3) / t, 2 * (-1 / 3) / t],
                         [0, 2 * (1 / 3) / t, (-1 / 3) / t], [0, 0, 0]])
    torch.testing.assert_close(adv_j, want, rtol=0, atol=1e-6)


def test_identical_rollouts_get_no_step_signal_whatever_the_step_types():
    """Four identical rollouts whose steps differ in kind (two wrong, three right): with every step type compared
    with itself there is nothing to credit (pooling the 20 rewards gave the wrong steps -1.95 in each rollout)."""
    r = torch.tensor([[1., 1, 0, 0, 1]] * 4)
    adv, code = step_advantages(r, torch.tensor([False] * 4), 4)
    assert torch.equal(adv, torch.zeros(4, 5)) and torch.equal(code, torch.zeros(4, 5, dtype=code.dtype))


def test_critical_weights_never_push_a_step_against_its_verdict():
    """Group A: a right step of a right rollout below the group mean (GenRM-like rewards) is not amplified (the old
    rule doubled its negative value); group B: a wrong rollout's first wrong step above the mean is not amplified
    (the old rule doubled its positive value)."""
    r = torch.tensor([[0.55], [1.0], [1.0], [0.3], [0.0], [0.0], [0.0], [0.4]])
    correct = torch.tensor([True, True, True, False, False, False, False, False])
    adv, code = step_advantages(r, correct, 4)
    sa = math.sqrt(0.120625) + 1e-4  # group A: mean .7125, deviations -.1625 .2875 .2875 -.4125
    sb = 0.2 + 1e-4  # group B: mean .1, deviations -.1 -.1 -.1 .3
    za = torch.tensor([-.1625, .2875, .2875, -.4125]) / sa
    zb = torch.tensor([-.1, -.1, -.1, .3]) / sb
    # A: rollout 0 right but z < 0: weight 1; 1, 2 discriminative; 3 first error and discriminative. B: 0-2 first
    # errors (z < 0); 3 wrong with z > 0: weight 1; no right rollout, so no step is discriminative
    assert code.view(-1).tolist() == [0, 2, 2, 1, 1, 1, 1, 0]
    w = torch.tensor([1., 2, 2, 3, 2, 2, 2, 1])
    torch.testing.assert_close(adv.view(-1), w * torch.cat([za, zb]), rtol=0, atol=1e-6)


def test_token_advantages_hand_computed():
    outcome = torch.tensor([0.5, -1.0])
    steps = torch.tensor([[1., 2, 3, 4, 5], [1., 1, 1, 1, 1]], dtype=torch.float64)
    spans = [{"query": (1, 3), "product": (3, 4), "judge": (6, 8)}, {}]  # rollout 1: no step found (unparsable)
    own = token_advantages(outcome, steps, spans, 9, process_weight=0.5)  # "step": each step its own value
    assert own[0].tolist() == [0.5, 1.0, 1.0, 1.5, 0.5, 0.5, 3.0, 3.0, 0.5]
    assert own[1].tolist() == [-1.0] * 9
    to_go = token_advantages(outcome, steps, spans, 9, process_weight=0.5, process_credit="to_go")
    # to go: query 1 + 2 + 5 = 8, product 2 + 5 = 7, judge 5 (only steps present in the text count)
    assert to_go[0].tolist() == [0.5, 4.5, 4.5, 4.0, 0.5, 0.5, 3.0, 3.0, 0.5]
    clipped = token_advantages(outcome, steps, spans, 7, process_weight=0.5, advantage_clip=2.0)
    assert clipped[0].tolist() == [0.5, 1.0, 1.0, 1.5, 0.5, 0.5, 2.0]  # spans past the length are cut
    zero = token_advantages(outcome, steps, spans, 9, process_weight=0.0)
    assert torch.equal(zero, outcome.view(-1, 1).double().repeat(1, 9))
    with pytest.raises(ValueError, match="process_credit"):
        token_advantages(outcome, steps, spans, 9, process_credit="later")
    # the decision: the <grade> tokens (0, 1) get A_out + 0.5 * D; D = mean of the judged step values
    judged = torch.tensor([[True, True, False, False, True], [False] * 5])
    d = decision_credit(steps, judged)
    assert d.tolist() == [(1 + 2 + 5) / 3, 0.0]
    graded = [{**spans[0], "grade": (0, 1)}, {"grade": (0, 2)}]
    dec = token_advantages(outcome, steps, graded, 9, process_weight=0.5, decision=d)
    assert dec[0].tolist() == [0.5 + 0.5 * 8 / 3, 1.0, 1.0, 1.5, 0.5, 0.5, 3.0, 3.0, 0.5]
    assert dec[1].tolist() == [-1.0] * 9  # no verdict: no decision credit


def test_outcome_reward_on_both_completion_formats():
    from she_lib.facts import example_facts

    ex = {"query": "red shoes", "title": "Red running shoes", "brand": "", "colour": "red", "category": "Shoes",
          "bullets": "", "label": "Exact"}
    ex.update(example_facts(ex))
    good = teacher_rationale(ex)
    reward = OutcomeReward(SCALE, format_weight=0.1)
    out = reward(None, [good, [{"role": "assistant", "content": good}], "no tags", None, good.replace("Exact", "Substitute", 1)],
                 label=["Exact", "Exact", "Exact", "Exact", "Exact"])
    assert out == pytest.approx([1.1, 1.1, 0.0, 0.0, 0.0])  # the last: wrong grade, judgement now contradicts it
    # a completion cut at the token limit (no end token last) earns 0, right grade or not; so does AGRL's reward
    eos = 7
    ids = [[1, 2, eos], [1, 2, 3], [], [1, eos]]
    cut = OutcomeReward(SCALE, eos_token_ids=[eos])(None, [good] * 4, label=["Exact"] * 4, completion_ids=ids)
    assert cut == pytest.approx([1.1, 0.0, 0.0, 1.1])
    assert OutcomeReward(SCALE)(None, [good] * 4, label=["Exact"] * 4, completion_ids=ids) == pytest.approx([1.1] * 4)
    from she_lib.rules import RuleReward

    rules = RuleReward(scale=SCALE, eos_token_ids=[eos])
    full = rules(None, [good] * 2, label=["Exact"] * 2, **{k: [ex[k]] * 2 for k in ex if k != "label"})
    capped = rules(None, [good] * 2, label=["Exact"] * 2, completion_ids=[[1, eos], [1, 2]],
                   **{k: [ex[k]] * 2 for k in ex if k != "label"})
    assert full[0] > 1 and capped == [full[0], 0.0]


# ---------------------------------------------------------------------------- spans from token ids
@pytest.mark.parametrize("segmentation", ["canonical", "per_character"])
def test_step_spans_from_any_token_segmentation(tokenizer, splits, segmentation):
    """A backend (vLLM, a server) may return a different tokenization of the same text than the HF tokenizer would
    give: spans are read from the ids themselves, so each step's tokens decode to text holding the whole element."""
    text = teacher_rationale(splits["train"].iloc[0].to_dict()) + "é!"  # a multi-byte character at the end
    ids = tokenizer.encode(text, add_special_tokens=False) if segmentation == "canonical" else \
        [i for ch in text for i in tokenizer.encode(ch, add_special_tokens=False)]
    ids = ids + [tokenizer.eos_token_id]
    offsets = token_char_offsets(ids, tokenizer)
    assert offsets[-1] == (len(text), len(text))  # the end token takes no characters
    assert all(a <= b for a, b in offsets) and offsets[0][0] == 0
    decoded, spans = completion_step_spans(ids, tokenizer, SCALE)
    assert decoded == text and set(spans) == {*STEPS, "grade"}
    parsed = parse(text, SCALE)
    assert text[slice(*parsed.grade_span)] in tokenizer.decode(ids[slice(*spans.pop("grade"))])
    for name, (a, b) in spans.items():
        element = text[slice(*parsed.steps[name].span)]
        assert element in tokenizer.decode(ids[a:b])  # the tokens cover the element ...
        assert element not in tokenizer.decode(ids[a + 1:b]) and element not in tokenizer.decode(ids[a:b - 1])  # ... tightly
    if segmentation == "per_character":
        assert all(tokenizer.decode(ids[a:b]) == text[slice(*parsed.steps[n].span)] for n, (a, b) in spans.items())


# ------------------------------------------------------- a fake generation backend: SRPO(0) == GRPO
def _loss_and_grads(trainer, ds):
    inputs = [ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    out = trainer._generate_and_score_completions(inputs)
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, out)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


def test_srpo_with_zero_process_weight_equals_grpo(smoke, tmp_path, splits):
    from trl import GRPOTrainer

    rows = splits["train"].head(2).to_dict("records")
    grpo, ds = _trainer(GRPOTrainer, smoke, tmp_path, rows, 0.0)
    srpo0, _ = _trainer(SRPOTrainer, smoke, tmp_path, rows, 0.0)
    srpo0.args.share_prompt_prefix = False  # TRL's own loss path, for equality to 1e-8 (sharing: test_prompt_sharing)
    out_g, loss_g, grads_g = _loss_and_grads(grpo, ds)
    out_s, loss_s, grads_s = _loss_and_grads(srpo0, ds)
    assert out_g["advantages"].dim() == 1 and out_s["advantages"].dim() == 2
    assert out_g["advantages"].abs().sum() > 0  # the fixed rollouts earn different rewards
    torch.testing.assert_close(out_s["advantages"], out_g["advantages"].view(-1, 1).expand_as(out_s["advantages"]))
    torch.testing.assert_close(loss_s, loss_g, rtol=1e-6, atol=1e-7)
    assert grads_g and grads_g.keys() == grads_s.keys()
    assert any(g.abs().sum() > 0 for g in grads_g.values())
    for n in grads_g:
        torch.testing.assert_close(grads_s[n], grads_g[n], rtol=1e-5, atol=1e-8)

    # with process weight 1 the step tokens move by the formula of the module doc; other tokens keep A_out
    srpo1, _ = _trainer(SRPOTrainer, smoke, tmp_path, rows, 1.0)
    out_1, _, _ = _loss_and_grads(srpo1, ds)
    tok, adv = srpo1.processing_class, out_1["advantages"]
    rewards = torch.tensor([[1.0] * 5] * 8)  # filled below from the examiner, as the trainer does
    texts, spans = [], []
    for row, m in zip(out_1["completion_ids"], out_1["completion_mask"].bool()):
        text, sp = completion_step_spans(row[m].tolist(), tok, SCALE)
        texts.append(text), spans.append(sp)
    exam = srpo1.examiner.examine([{**ds[i], "rationale": t} for i, t in zip((0, 0, 0, 0, 1, 1, 1, 1), texts)])
    rewards = torch.tensor(exam.rewards, dtype=torch.float32)
    judged = torch.tensor(exam.judged())
    steps, _ = step_advantages(rewards, torch.tensor(exam.correct), 4, judged=judged)
    want = token_advantages(out_g["advantages"], steps.to(torch.float32), spans, adv.shape[1], 1.0,
                            decision=decision_credit(steps, judged))
    torch.testing.assert_close(adv, want)
    assert not torch.allclose(adv, out_g["advantages"].view(-1, 1).expand_as(adv))
    assert spans[0].keys() == {*STEPS, "grade"} and spans[3] == {}  # teacher rationale parsed; "<grade>maybe": none
    # without the helpers: a completion token outside every step span keeps its rollout's outcome advantage (all of
    # "<grade>maybe": rows 3 and 7), and some step token of the teacher rationale (row 0) moved away from it
    for i, sp in enumerate(spans):
        outside = out_1["completion_mask"][i].bool().clone()
        for a, b in sp.values():
            outside[a:b] = False
        assert torch.equal(adv[i][outside], out_g["advantages"][i].expand(int(outside.sum()))), i
    assert spans[7] == {} and out_1["completion_mask"][3].sum() == len("<grade>maybe") + 1  # one id a character + EOS
    assert (adv[0][out_1["completion_mask"][0].bool()] != out_g["advantages"][0]).any()


def test_batch_advantages_hand_case():
    """Two groups of 4: one with a right rollout (1.1), one all wrong (format 0.1, a cut rollout 0). The group
    baseline gives the all-wrong group ~0; the batch baseline makes its wrong rollouts negative."""
    r = torch.tensor([1.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0])
    # mean 1.7 / 8 = 0.2125; squared deviations 0.787656 + 6 x 0.012656 + 0.045156 = 0.908750, / 7 -> std 0.360307
    none = batch_advantages(r, "none")
    torch.testing.assert_close(none, r - 0.2125)
    scaled = batch_advantages(r, "batch")
    torch.testing.assert_close(scaled, (r - 0.2125) / (0.360307 + 1e-4), rtol=1e-5, atol=1e-6)
    assert (scaled[4:] < 0).all() and scaled[0] > 0
    assert torch.allclose(batch_advantages(r, "group"), scaled)  # any scaling but "none" divides by the batch std
    with_nan = batch_advantages(torch.tensor([1.0, float("nan"), 0.0]), "none")
    torch.testing.assert_close(with_nan, torch.tensor([0.5, 0.0, -0.5]))
    assert torch.equal(batch_advantages(torch.tensor([float("nan")])), torch.zeros(1))


def test_batch_baseline_in_the_trainer(smoke, tmp_path, splits):
    """advantage_baseline="batch": the outcome advantages are batch_advantages of the step's summed rewards."""
    rows = splits["train"].head(2).to_dict("records")
    trainer, ds = _trainer(SRPOTrainer, smoke, tmp_path, rows, 0.0)
    trainer.args.advantage_baseline, trainer.args.scale_rewards = "batch", "none"
    out = trainer._generate_and_score_completions([ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)])
    r = trainer._last_rewards
    assert r.std() > 0
    want = (r - r.mean()).view(-1, 1).expand_as(out["advantages"])
    torch.testing.assert_close(out["advantages"], want)
    trainer.args.advantage_baseline = "prompt"
    with pytest.raises(ValueError, match="advantage_baseline"):
        trainer._generate_and_score_completions([ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)])


# --------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("method", ["grpo", "srpo", "agrl"])
def test_rl_end_to_end_on_smoke(smoke, splits, trained_sft, method):
    from she_lib.evaluate import evaluate_run

    sft = trained_sft
    args = lambda: rl_config(smoke, method, save_steps=1)  # noqa: E731
    part = train_rl(smoke, method, sft, args(), splits=splits, callbacks=[StopAt(1)])  # interrupted after a step
    assert not json.loads((part / "run.json").read_text())["finished"]
    run = train_rl(smoke, method, sft, args(), splits=splits)
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == method and info["finished"] and info["global_step"] == 2
    assert info["resumed_from"] == "checkpoint-1"
    assert (run / info["init_adapter"]).resolve() == sft.resolve()
    report = json.loads((run / "data_report.json").read_text())
    assert report["difficulty"]["pool"] == 6 and report["curriculum"]["steps"] == 2
    assert sum(s["prompts"] for s in report["curriculum"]["stages"]) == report["diversity"]["selected"]["n"]
    log = json.loads((run / "train_log.json").read_text())
    assert [e["stage"] for e in log if "loss" in e] == [0, 0] and all("entropy" in e for e in log if "loss" in e)
    if method == "agrl":
        from dataclasses import asdict

        from she_lib.agrl import AGRLConfig

        assert set(info["replay"]) >= {"groups_guided", "prompts_guided", "prompts_recovered"}
        assert json.loads((run / "start.json").read_text())["config"]["replay"] == asdict(AGRLConfig())
    if method != "grpo":
        recs = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
        assert len(recs) == 2 * 4  # 2 steps x 2 prompts x G = 2 (the resumed step's rollouts are logged again)
        r = recs[0]
        assert len(r["tokens"]) == len(r["token_advantages"]) == len(r["token_steps"]) and r["steps"] == list(STEPS)
        assert set(r["step_rewards"]) == {"verifier", "genrm", "combined"} and len(r["critical"]) == 5
    else:
        assert not (run / "rollouts.jsonl").exists()
    stamp = (run / "run.json").stat().st_mtime_ns
    assert train_rl(smoke, method, sft, args(), splits=splits) == run and (run / "run.json").stat().st_mtime_ns == stamp
    (m,) = evaluate_run(run, smoke, splits["test"].head(4), modes=("first_token",)).values()
    assert m["n_examples"] == 4 and m["run"]["kind"] == method


class _ConstantScorer:
    """A GenRM stand-in that finds every step 20% likely correct."""
    source = "constant"

    def score(self, examples, rationales):
        return np.full((len(rationales), len(STEPS)), 0.2)


def test_rl_with_a_hybrid_examiner_records_it_and_is_reused(smoke, splits, trained_sft):
    """The examiner's config (a VerifierConfig holds sets) is part of the run's identity, in JSON."""
    from she_lib.examiner import Examiner, HybridConfig
    from she_lib.verifier import VerifierConfig

    examiner = lambda: Examiner(_ConstantScorer(), HybridConfig(rule="blend"), "esci")  # noqa: E731
    run = train_rl(smoke, "srpo", trained_sft, rl_config(smoke, "srpo"), splits=splits, name="srpo_hybrid",
                   examiner=examiner())
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] and info["config"]["examiner"]["scorer"] == "constant"
    assert info["config"]["examiner"]["verifier"]["filler_words"] == sorted(VerifierConfig().filler_words)
    stamp = (run / "run.json").stat().st_mtime_ns
    again = train_rl(smoke, "srpo", trained_sft, rl_config(smoke, "srpo"), splits=splits, name="srpo_hybrid",
                     examiner=examiner())
    assert again == run and (run / "run.json").stat().st_mtime_ns == stamp


def test_rl_cli_refuses_an_unnamed_replay_variant():
    from she_lib.rl import main

    with pytest.raises(SystemExit):  # argparse's error: an AGRL variant must not reuse the default run's folder
        main(["--method", "agrl", "--profile", "smoke", "--sft", "none", "--replace-fraction", "0.5"])
    with pytest.raises(SystemExit):
        main(["--method", "grpo", "--profile", "smoke", "--sft", "none", "--replace-fraction", "0.5", "--name", "x"])
    for args in (["--hint", "grade"], ["--hint", "grade", "--method", "grpo", "--name", "x"]):  # the hint likewise
        with pytest.raises(SystemExit):
            main(["--method", "agrl", "--profile", "smoke", "--sft", "none", *args])
    with pytest.raises(SystemExit):  # an unknown hint is argparse's error, not a crash in the trainer
        main(["--method", "agrl", "--profile", "smoke", "--sft", "none", "--hint", "label", "--name", "x"])
    for flag in ("--grade-temperature", "--min-p", "--learning-rate"):  # a sampling or optimiser variant too
        with pytest.raises(SystemExit):
            main(["--method", "grpo", "--profile", "smoke", "--sft", "none", flag, "2"])


def test_vllm_settings_and_batch_split(smoke):
    from she_lib.rl import per_device_rollouts, prompts_per_step, vllm_settings

    assert vllm_settings("off") == {"use_vllm": False}
    assert vllm_settings("server")["vllm_mode"] == "server" and vllm_settings("colocate")["use_vllm"]
    assert vllm_settings("auto") == {"use_vllm": False}  # no CUDA here
    with pytest.raises(ValueError, match="vllm must be"):
        vllm_settings("remote")
    args = rl_config(smoke, "srpo", num_generations=4, prompts_per_step=3)
    assert args.per_device_train_batch_size == 12 and prompts_per_step(args) == 3 and not args.use_vllm
    assert rl_config(smoke, "grpo").process_weight == 0 and rl_config(smoke, "agrl").process_weight == 0
    # 12 rollouts a step in 2 micro-batches of 6, generated together: the same step, half the activations at once
    args = rl_config(smoke, "srpo", num_generations=4, prompts_per_step=3, gradient_accumulation_steps=2)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.generation_batch_size) == (6, 2, 12)
    assert prompts_per_step(args) == 3
    with pytest.raises(ValueError, match="do not split into 5 micro-batches"):
        rl_config(smoke, "srpo", num_generations=4, prompts_per_step=3, gradient_accumulation_steps=5)
    assert per_device_rollouts(4, 3, 2) == 6  # under a 2-process launch each process takes half of the rollouts
    with pytest.raises(ValueError, match="do not split over 2 processes"):
        per_device_rollouts(3, 1, 2)
    with pytest.raises(ValueError, match="unknown RL method"):
        rl_config(smoke, "ppo")


def test_recall_weights_and_weighted_reward(smoke):
    from she_lib.rewards import OutcomeReward, recall_weights
    from she_lib.rl import outcome_weights

    w = recall_weights(["Exact", "Exact", "Substitute", "Complement", "Irrelevant"], [0.6, 0.4, 0.25, 0.01, 0.1])
    # means: Exact 0.5, Substitute 0.25, Complement 0.01, Irrelevant 0.1 -> 0.5 / mean, capped at 10
    assert w == pytest.approx({"Exact": 1.0, "Substitute": 2.0, "Complement": 10.0, "Irrelevant": 5.0})
    with pytest.raises(ValueError, match="positive"):
        recall_weights(["Exact"], [0.0])
    right = "<grade>Irrelevant</grade>"
    r = OutcomeReward(grade_weights=w)([None] * 3, [right, right, "<grade>Exact</grade>"],
                                       ["Irrelevant", "Exact", "Exact"])
    plain = OutcomeReward()([None] * 3, [right, right, "<grade>Exact</grade>"], ["Irrelevant", "Exact", "Exact"])
    assert [a - b for a, b in zip(r, plain)] == pytest.approx([4.0, 0.0, 0.0])  # only a right Irrelevant moves
    prompts = pd.DataFrame({"label": ["Exact", "Irrelevant"], "pass_rate": [0.5, 0.1]})
    args = rl_config(smoke, "grpo", "x", grade_weighting="recall", scale_rewards="batch")
    assert outcome_weights(args, prompts) == pytest.approx({"Exact": 1.0, "Irrelevant": 5.0})
    args.scale_rewards = "group"
    with pytest.raises(ValueError, match="scale_rewards"):
        outcome_weights(args, prompts)
    assert outcome_weights(rl_config(smoke, "grpo", "x"), prompts) is None
    args.scale_rewards = "batch"
    with pytest.raises(ValueError, match="agrl"):
        outcome_weights(args, prompts, "agrl")


def test_online_recall_weights_follow_the_rollouts(smoke):
    """OnlineRecallWeights: r_g <- m r_g + (1 - m) acc_g after each call, w_g = min(cap, max_c r_c / r_g); a batch is
    weighted by the estimate from before it (hand-computed)."""
    from she_lib.rewards import OnlineRecallWeights, OutcomeReward
    from she_lib.rl import outcome_weights

    online = OnlineRecallWeights(["Exact", "Exact", "Irrelevant"], [0.6, 0.4, 0.1], max_weight=10.0, momentum=0.5)
    assert online.weights() == pytest.approx({"Exact": 1.0, "Irrelevant": 5.0})  # 0.5 / 0.1 at the start
    reward = OutcomeReward(grade_weights=online, format_weight=0.0)
    irr, exact = "<grade>Irrelevant</grade>", "<grade>Exact</grade>"
    # batch 1: Irrelevant prompts answered right 2 of 2, Exact prompts 0 of 2 (both say Irrelevant)
    r = reward([None] * 4, [irr, irr, irr, irr], ["Irrelevant", "Irrelevant", "Exact", "Exact"])
    assert r == pytest.approx([5.0, 5.0, 0.0, 0.0])  # the weights from before the batch
    # r_Irr = 0.5 * 0.1 + 0.5 * 1 = 0.55, r_Exact = 0.5 * 0.5 + 0.5 * 0 = 0.25: Exact now the rarer grade
    assert online.recall == pytest.approx({"Exact": 0.25, "Irrelevant": 0.55})
    assert online.weights() == pytest.approx({"Exact": 2.2, "Irrelevant": 1.0})
    assert reward([None], [exact], ["Exact"]) == pytest.approx([2.2])
    assert online.recall == pytest.approx({"Exact": 0.625, "Irrelevant": 0.55})  # only the grades in the batch move
    online.recall["Irrelevant"] = 0.0  # a grade never answered right weighs the cap
    assert online.weights()["Irrelevant"] == 10.0
    with pytest.raises(ValueError, match="momentum"):
        OnlineRecallWeights(["Exact"], [0.5], momentum=1.0)
    prompts = pd.DataFrame({"label": ["Exact", "Irrelevant"], "pass_rate": [0.5, 0.1]})
    args = rl_config(smoke, "grpo", "x", grade_weighting="recall_online", scale_rewards="batch",
                     grade_weight_momentum=0.9)
    made = outcome_weights(args, prompts)
    assert isinstance(made, OnlineRecallWeights) and made.momentum == 0.9
    assert made.weights() == pytest.approx({"Exact": 1.0, "Irrelevant": 5.0})
    args.scale_rewards = "group"
    with pytest.raises(ValueError, match="scale_rewards"):
        outcome_weights(args, prompts)
