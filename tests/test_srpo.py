"""SRPO (she_lib.srpo, srpo_trainer, step_spans, rewards): exact advantages on hand-computed groups, token-span
alignment for any generation backend, SRPO with process weight 0 == TRL's GRPO (loss and gradients), and GRPO / SRPO
end to end on the smoke profile."""
import json
import math

import numpy as np
import pytest
import torch

from she_lib.labels import get_scale
from she_lib.rationales import teacher_rationale
from she_lib.schema import STEPS, parse
from she_lib.rl import rl_config, train_rl
from she_lib.rewards import OutcomeReward
from she_lib.srpo import step_advantages, token_advantages
from she_lib.srpo_trainer import SRPOTrainer
from she_lib.step_spans import completion_step_spans, token_char_offsets
from fakes import fake_trainer as _trainer
from callbacks import StopAt

SCALE = get_scale("esci")


# ------------------------------------------------------------------------------------------ the maths
def test_step_advantages_hand_computed_group():
    """G = 4 rollouts, K = 3 steps; rollouts 0 and 2 right, 1 and 3 wrong."""
    r = torch.tensor([[1., 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    correct = torch.tensor([True, False, True, False])
    adv, code = step_advantages(r, correct, group_size=4)
    # 6 ones and 6 zeros: mean 0.5, unbiased std sqrt(12 * 0.25 / 11); z = +-c
    c = 0.5 / (math.sqrt(3 / 11) + 1e-4)
    # first errors: rollout 1 at step 1, rollout 3 at step 0. Every step is discriminative (right rollout 0 has it
    # right, a wrong rollout has it wrong); a rollout's step is weighted when its verdict agrees with its outcome.
    w = torch.tensor([[2., 2, 2], [1, 3, 2], [2, 2, 1], [3, 2, 2]])
    z = torch.tensor([[c, c, c], [c, -c, -c], [c, c, -c], [-c, -c, -c]])
    torch.testing.assert_close(adv, w * z, rtol=0, atol=1e-6)
    assert code.tolist() == [[2, 2, 2], [0, 1, 2], [2, 2, 0], [1, 2, 2]]

    # weights are config: with both kappas 0 the step values are the plain z-scores; two groups are independent
    adv0, _ = step_advantages(torch.cat([r, torch.full((4, 3), 0.7)]), torch.cat([correct, correct]), 4, 0.0, 0.0)
    torch.testing.assert_close(adv0[:4], z, rtol=0, atol=1e-6)
    assert torch.equal(adv0[4:], torch.zeros(4, 3))  # a group with equal step rewards has no process signal

    # rollout 3 unparsable (default rewards, not verdicts): same z-scores, but it is never critical; the only other
    # wrong rollout (1) has step 0 right, so step 0 is no longer discriminative
    judged = torch.ones(4, 3, dtype=torch.bool)
    judged[3] = False
    adv_j, code_j = step_advantages(r, correct, 4, judged=judged)
    assert code_j.tolist() == [[0, 2, 2], [0, 1, 2], [0, 2, 0], [0, 0, 0]]
    w_j = torch.tensor([[1., 2, 2], [1, 3, 2], [1, 2, 1], [1, 1, 1]])
    torch.testing.assert_close(adv_j, w_j * z, rtol=0, atol=1e-6)


def test_token_advantages_hand_computed():
    outcome = torch.tensor([0.5, -1.0])
    steps = torch.tensor([[1., 2, 3, 4, 5], [1., 1, 1, 1, 1]], dtype=torch.float64)
    spans = [{"query": (1, 3), "product": (3, 4), "judge": (6, 8)}, {}]  # rollout 1: no step found (unparsable)
    to_go = token_advantages(outcome, steps, spans, 9, process_weight=0.5)
    # to go: query 1 + 2 + 5 = 8, product 2 + 5 = 7, judge 5 (only steps present in the text count)
    assert to_go[0].tolist() == [0.5, 4.5, 4.5, 4.0, 0.5, 0.5, 3.0, 3.0, 0.5]
    assert to_go[1].tolist() == [-1.0] * 9
    own = token_advantages(outcome, steps, spans, 9, process_weight=0.5, process_credit="step")
    assert own[0].tolist() == [0.5, 1.0, 1.0, 1.5, 0.5, 0.5, 3.0, 3.0, 0.5]
    clipped = token_advantages(outcome, steps, spans, 7, process_weight=0.5, advantage_clip=2.0)
    assert clipped[0].tolist() == [0.5, 2.0, 2.0, 2.0, 0.5, 0.5, 2.0]  # spans past the length are cut
    zero = token_advantages(outcome, steps, spans, 9, process_weight=0.0)
    assert torch.equal(zero, outcome.view(-1, 1).double().repeat(1, 9))
    with pytest.raises(ValueError, match="process_credit"):
        token_advantages(outcome, steps, spans, 9, process_credit="later")


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
    assert decoded == text and set(spans) == set(STEPS)
    parsed = parse(text, SCALE)
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
    from she_lib.examiner import SCORED

    steps, _ = step_advantages(rewards, torch.tensor(exam.correct), 4, judged=torch.tensor(np.isin(exam.sources, SCORED)))
    want = token_advantages(out_g["advantages"], steps.to(torch.float32), spans, adv.shape[1], 1.0)
    torch.testing.assert_close(adv, want)
    assert not torch.allclose(adv, out_g["advantages"].view(-1, 1).expand_as(adv))
    assert spans[0].keys() == set(STEPS) and spans[3] == {}  # teacher rationale parsed; "<grade>maybe" has no step
    # without the helpers: a completion token outside every step span keeps its rollout's outcome advantage (all of
    # "<grade>maybe": rows 3 and 7), and some step token of the teacher rationale (row 0) moved away from it
    for i, sp in enumerate(spans):
        outside = out_1["completion_mask"][i].bool().clone()
        for a, b in sp.values():
            outside[a:b] = False
        assert torch.equal(adv[i][outside], out_g["advantages"][i].expand(int(outside.sum()))), i
    assert spans[7] == {} and out_1["completion_mask"][3].sum() == len("<grade>maybe") + 1  # one id a character + EOS
    assert (adv[0][out_1["completion_mask"][0].bool()] != out_g["advantages"][0]).any()


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
        assert set(info["replay"]) >= {"groups_guided", "prompts_guided", "prompts_recovered"}
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
    assert per_device_rollouts(4, 3, 2) == 6  # under a 2-process launch each process takes half of the rollouts
    with pytest.raises(ValueError, match="do not split over 2 processes"):
        per_device_rollouts(3, 1, 2)
    with pytest.raises(ValueError, match="unknown RL method"):
        rl_config(smoke, "ppo")
