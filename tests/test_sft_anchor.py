"""The SFT anchor (she_lib.sft_anchor): gold tokens, their NLL against a hand computation, and the trainer's loss =
TRL's + sft_weight x that NLL on the first row of each group."""
import pytest
import torch

from she_lib.rationales import teacher_rationale
from she_lib.rl import _args_key, rl_config
from she_lib.sft_anchor import gold_batch, gold_nll
from she_lib.srpo_trainer import SRPOTrainer
from fakes import fake_trainer


def test_gold_batch_is_the_teacher_rationale_then_eos_on_group_firsts(tokenizer, splits):
    rows = splits["train"].head(2).to_dict("records")
    ids, mask = gold_batch(rows + rows, tokenizer, "grade_first", 400, [True, False, False, True])
    want = [tokenizer(teacher_rationale(r), add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in rows]
    for i, w in enumerate(want + want):
        assert ids[i, :len(w)].tolist() == w
        assert (ids[i, len(w):] == tokenizer.pad_token_id).all()
    assert mask.sum(1).tolist() == [len(want[0]), 0, 0, len(want[1])]
    cut, cut_mask = gold_batch(rows, tokenizer, "grade_first", 5, [True, True])
    assert cut.shape == (2, 5) and cut[:, -1].tolist() == [tokenizer.eos_token_id] * 2 and cut_mask.all()
    steps_first, _ = gold_batch(rows[:1], tokenizer, "steps_first", 400, [True])
    assert tokenizer.decode(steps_first[0]).startswith(teacher_rationale(rows[0], "steps_first")[:20])


def test_gold_nll_hand_computed(tiny_policy):
    """Left-padded prompts, right-padded gold: the mean of -log p(y_t | x, y_<t) over the marked gold tokens, each
    read from a plain forward of that row's real tokens (pads dropped; positions then differ from TRL's pad-counting
    ones only by a shift that the model's rotary attention does not see)."""
    model = tiny_policy.model.eval()
    torch.manual_seed(0)
    prompt = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25], [31, 32, 33, 34, 35]])
    pmask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    gold = torch.tensor([[41, 42, 43], [51, 52, 0], [61, 62, 63]])
    gmask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])  # row 2 is not a group's first
    with torch.no_grad():
        got = gold_nll(model, prompt, pmask, gold, gmask)
        terms = []
        for i in range(2):
            real = torch.cat([prompt[i][pmask[i].bool()], gold[i][gmask[i].bool()]])[None]
            logp = torch.log_softmax(model(input_ids=real).logits[0].float(), -1)
            n = int(gmask[i].sum())
            terms += [-logp[real.shape[1] - n - 1 + t, real[0, real.shape[1] - n + t]] for t in range(n)]
    torch.testing.assert_close(got, torch.stack(terms).mean(), rtol=1e-4, atol=1e-4)
    assert gold_nll(model, prompt, pmask, gold, torch.zeros_like(gmask)) is None


def test_trainer_adds_the_weighted_gold_nll(smoke, tmp_path, splits):
    rows = splits["train"].head(2).to_dict("records")
    trainer, ds = fake_trainer(SRPOTrainer, smoke, tmp_path, rows, 1.0)
    inputs = [ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    plain = trainer._generate_and_score_completions(inputs)
    assert "sft_ids" not in plain
    trainer.args.sft_weight = 0.5
    out = trainer._generate_and_score_completions(inputs)
    assert out["sft_mask"].any(-1).tolist() == [True, False, False, False, True, False, False, False]
    trainer.current_gradient_accumulation_steps = 2
    with torch.no_grad():
        rl = trainer.compute_loss(trainer.model, {k: v for k, v in out.items() if not k.startswith("sft_")})
        both = trainer.compute_loss(trainer.model, out)
        nll = gold_nll(trainer.model, out["prompt_ids"], out["prompt_mask"], out["sft_ids"], out["sft_mask"])
    torch.testing.assert_close(both - rl, 0.5 * nll / 2, rtol=1e-4, atol=1e-5)
    assert nll > 0 and trainer._metrics["train"]["sft_anchor/nll"][-1] == pytest.approx(nll.item(), rel=1e-4)


def test_sft_weight_enters_a_run_key_only_when_set(smoke):
    args = rl_config(smoke, "srpo", "x")
    assert "sft_weight" not in _args_key(args)  # runs trained before the field keep their keys
    assert _args_key(rl_config(smoke, "srpo", "x", sft_weight=0.5))["sft_weight"] == 0.5


def test_grpo_with_the_anchor_trains_end_to_end_and_logs_it(smoke, splits, trained_sft):
    """GRPO with sft_weight runs on SRPO's trainer at process weight 0 (TRL's GRPO there, tested in test_srpo), logs
    the gold NLL every step and records the weight in its run key."""
    import json

    from she_lib.rl import train_rl

    run = train_rl(smoke, "grpo", trained_sft, rl_config(smoke, "grpo", sft_weight=0.5), splits=splits,
                   name="grpo_sft05")
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] and info["config"]["args"]["sft_weight"] == 0.5
    steps = [e for e in json.loads((run / "train_log.json").read_text()) if "loss" in e]
    assert steps and all(e["sft_anchor/nll"] > 0 for e in steps)
