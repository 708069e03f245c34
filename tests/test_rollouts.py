"""she_lib.rollouts: the shared-prefix rollout engine gives TRL's own tokens (greedy, float32), its merged copy
follows the trained adapter, and the engine is chosen by the config."""
import pandas as pd
import pytest
import torch
from trl import GRPOTrainer

from she_lib.inference import _until_end, grade_token_ids
from she_lib.modeling import load_policy
from she_lib.rewards import OutcomeReward
from she_lib.rl import rl_config, rl_dataset
from she_lib.rollouts import GradeTemperature, SharedPrefixRollouts, _runs, rollout_func_for
from she_lib.trl_compat import ensure_trl_cpu_support


def _trainer(smoke, splits, tmp_path, **overrides):
    ensure_trl_cpu_support()
    policy = load_policy(smoke)
    args = rl_config(smoke, "grpo", tmp_path / "rl", num_generations=3, prompts_per_step=2, max_completion_length=12,
                     max_steps=1, bf16=False, **overrides)
    ds = rl_dataset(splits["train"].head(2), smoke)
    trainer = GRPOTrainer(model=policy.model, reward_funcs=[OutcomeReward("esci")], args=args, train_dataset=ds,
                          processing_class=policy.tokenizer, peft_config=policy.lora_config)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so that merging it matters
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return trainer, [ds[i]["prompt"] for i in (0, 0, 0, 1, 1, 1)]


def test_greedy_rollouts_equal_trl_generate(smoke, splits, tmp_path):
    """top_k = 1 makes TRL's sampling greedy: the engine must give the same completion ids and prompt ids."""
    trainer, prompts = _trainer(smoke, splits, tmp_path, top_k=1)
    trainer.model.eval()
    trl_prompt_ids, trl_ids = trainer._generate(prompts)[:2]
    trainer.rollout_func = SharedPrefixRollouts(torch.float32)
    ours_prompt_ids, ours_ids = trainer._generate(prompts)[:2]
    assert ours_prompt_ids == trl_prompt_ids
    assert ours_ids == trl_ids and len(ours_ids) == 6


def test_copy_follows_the_adapter_after_a_step(smoke, splits, tmp_path):
    trainer, prompts = _trainer(smoke, splits, tmp_path)
    engine = SharedPrefixRollouts(torch.float32)
    model = trainer.model
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    copy = engine.policy_copy(trainer)
    with torch.no_grad():
        model.eval()
        assert torch.allclose(copy(ids).logits, model(ids).logits, atol=1e-4)
        for name, p in model.named_parameters():  # "an optimizer step"
            if "lora_A" in name:
                p.add_(0.3)
        before = copy(ids).logits.clone()
        assert engine.policy_copy(trainer) is copy and torch.equal(copy(ids).logits, before)  # same step: no refresh
        trainer.state.global_step += 1
        after = engine.policy_copy(trainer)(ids).logits
        assert not torch.allclose(after, before, atol=1e-3)
        assert torch.allclose(after, model(ids).logits, atol=1e-4)


def test_copy_carries_the_grade_head(smoke, splits, tmp_path):
    from she_lib.grade_head import GradeHead, grade_head_of

    trainer, _ = _trainer(smoke, splits, tmp_path)
    tok = trainer.processing_class
    head = GradeHead(tok("<grade>", add_special_tokens=False).input_ids, grade_token_ids(tok, ["Exact", "Irrelevant"]),
                     torch.randn(2, trainer.model.config.hidden_size))
    head.install(trainer.model)
    copy = SharedPrefixRollouts(torch.float32).policy_copy(trainer)
    assert grade_head_of(copy) is not None and grade_head_of(copy) is not grade_head_of(trainer.model)
    ids = torch.tensor([[5, 17, 198] + head.tag_ids])
    with torch.no_grad():
        trainer.model.eval()
        got, want = copy(ids).logits[0, -1], trainer.model(ids).logits[0, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    args = rl_config(smoke, "grpo", tmp_path / "engine", vllm="off")
    assert isinstance(rollout_func_for(args, trainer.model), SharedPrefixRollouts)
    args.rollout_engine = "trl"  # TRL's generate does not read the head
    with pytest.raises(ValueError, match="grade head"):
        rollout_func_for(args, trainer.model)


def test_runs_and_until_end_hand_cases():
    assert _runs(["a", "a", "b", "b", "a"]) == [[0, 1], [2, 3], [4]]
    assert _runs([]) == []
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [3, 9, 1, 0]])
    assert _until_end(ids, 2) == [[5, 2], [5, 6, 7, 8], [3, 9, 1, 0]]
    assert _until_end(ids, [7, 1]) == [[5, 2, 7], [5, 6, 7], [3, 9, 1]]


def test_unequal_runs_sample_one_per_prompt(smoke, splits, tmp_path):
    trainer, prompts = _trainer(smoke, splits, tmp_path)
    out = SharedPrefixRollouts(torch.float32)(prompts[:4], trainer)  # runs of 3 and 1
    assert len(out["completion_ids"]) == len(out["prompt_ids"]) == 4 and out["logprobs"] is None
    assert all(1 <= len(c) <= 12 for c in out["completion_ids"])


def test_engine_choice(smoke, tiny_policy, tmp_path):
    args = rl_config(smoke, "grpo", tmp_path, vllm="off")
    assert isinstance(rollout_func_for(args, tiny_policy.model), SharedPrefixRollouts)  # auto on a CPU
    args.bf16 = True
    assert rollout_func_for(args, tiny_policy.model).dtype == torch.bfloat16
    args.rollout_engine = "trl"
    assert rollout_func_for(args, tiny_policy.model) is None
    args.rollout_engine = "fast"
    with pytest.raises(ValueError, match="rollout_engine"):
        rollout_func_for(args, tiny_policy.model)
    args.rollout_engine, args.use_vllm = "shared", True
    with pytest.raises(ValueError, match="exclude"):
        rollout_func_for(args, tiny_policy.model)
    args.rollout_engine = "auto"
    assert rollout_func_for(args, tiny_policy.model) is None



def test_grade_temperature_hand_case():
    """Rows ending in the tag keep only the grade tokens' scores, divided by T_g; other rows are untouched."""
    proc = GradeTemperature([7, 8], [0, 2], 2.0)
    ids = torch.tensor([[1, 7, 8], [7, 8, 3], [8, 7, 8]])
    scores = torch.tensor([[2.0, 5.0, -2.0]] * 3)
    out = proc(ids, scores.clone())
    inf = float("-inf")
    assert torch.equal(out[0], torch.tensor([1.0, inf, -1.0])) and torch.equal(out[2], out[0])
    assert torch.equal(out[1], scores[1])
    # softmax over the grades of z / 2, z = (2, -2): e^1 / (e^1 + e^-1) = 0.880797
    assert torch.allclose(torch.softmax(out[0], -1), torch.tensor([0.880797, 0.0, 0.119203]), atol=1e-6)
    assert torch.equal(proc(torch.tensor([[8]]), scores[:1]), scores[:1])  # shorter than the tag
    with pytest.raises(ValueError, match="grade_temperature"):
        GradeTemperature([7], [0], 0.0)


def test_grade_temperature_reaches_the_rollouts(smoke, splits, tmp_path, monkeypatch):
    """The engine hands generate a GradeTemperature with "<grade>"'s ids and the grade words' first tokens;
    TRL's engine refuses the setting, and so does an engine without the grade words."""
    trainer, prompts = _trainer(smoke, splits, tmp_path, grade_temperature=3.0)
    seen = {}
    import she_lib.rollouts as rollouts

    def spy(*args, **kw):
        seen.update(kw)
        return [[[1]] * 3] * 2
    monkeypatch.setattr(rollouts, "generate", spy)
    words = ("Exact", "Substitute", "Complement", "Irrelevant")
    rollout_func_for(trainer.args, trainer.model, words)(prompts, trainer)
    (proc,) = seen["logits_processor"]
    tok = trainer.processing_class
    assert isinstance(proc, GradeTemperature) and proc.temperature == 3.0
    assert proc.tag.tolist() == tok("<grade>", add_special_tokens=False).input_ids
    assert proc.grades.tolist() == grade_token_ids(tok, words)
    with pytest.raises(ValueError, match="grade words"):
        rollout_func_for(trainer.args, trainer.model)
    args = rl_config(smoke, "grpo", tmp_path, vllm="off", grade_temperature=2.0, rollout_engine="trl")
    with pytest.raises(ValueError, match="grade_temperature"):
        rollout_func_for(args, trainer.model, words)
