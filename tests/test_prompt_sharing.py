"""she_lib.prompt_sharing: log-probabilities, entropies and LoRA gradients with each group's prompt run once equal
TRL's own, on a batch shaped as GRPO's (left-padded prompts, right-padded completions, groups of G rows)."""
import torch

from she_lib import prompt_sharing
from she_lib.inference import repeated_prefix_cache
from she_lib.modeling import load_policy
from she_lib.prompt_sharing import SharedPromptGRPOTrainer, prompt_groups
from she_lib.rewards import OutcomeReward
from she_lib.rl import rl_config, rl_dataset
from she_lib.trl_compat import ensure_trl_cpu_support


def _batch(pad: int):
    """2 prompts (7 and 5 tokens, left-padded to 7) x G = 3 completions (right-padded to 4)."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 400, (7,), generator=g).tolist(),
               [pad, pad] + torch.randint(3, 400, (5,), generator=g).tolist()]
    pmask = [[1] * 7, [0, 0] + [1] * 5]
    comps, cmask = [], []
    for lengths in ((4, 2, 3), (1, 4, 3)):
        for n in lengths:
            comps.append(torch.randint(3, 400, (n,), generator=g).tolist() + [pad] * (4 - n))
            cmask.append([1] * n + [0] * (4 - n))
    ids = torch.tensor([prompts[i // 3] + comps[i] for i in range(6)])
    mask = torch.tensor([pmask[i // 3] + cmask[i] for i in range(6)])
    return ids, mask, torch.tensor(cmask)


def _trainer(smoke, splits, tmp_path):
    """(policy, SharedPromptGRPOTrainer) on the smoke model, G = 3, 2 prompts a step."""
    ensure_trl_cpu_support()
    policy = load_policy(smoke)
    args = rl_config(smoke, "grpo", tmp_path, num_generations=3, prompts_per_step=2, max_steps=1, bf16=False)
    return policy, SharedPromptGRPOTrainer(model=policy.model, reward_funcs=[OutcomeReward("esci")], args=args,
                                           train_dataset=rl_dataset(splits["train"].head(2), smoke),
                                           processing_class=policy.tokenizer, peft_config=policy.lora_config)


def test_prompt_groups_hand_case():
    ids = torch.tensor([[1, 2, 9], [1, 2, 8], [0, 2, 7], [1, 2, 6]])
    mask = torch.ones_like(ids)
    assert prompt_groups(ids, mask, 2) == [slice(0, 2), slice(2, 3), slice(3, 4)]
    mask[1, 0] = 0
    assert prompt_groups(ids, mask, 2) == [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 4)]


def test_shared_prompt_logps_entropies_and_gradients_equal_trls(smoke, splits, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(prompt_sharing, "repeated_prefix_cache",
                        lambda *a, **kw: calls.append(a[1]) or repeated_prefix_cache(*a, **kw))
    policy, trainer = _trainer(smoke, splits, tmp_path)
    model = trainer.model
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    ids, mask, cmask = _batch(policy.tokenizer.pad_token_id)
    results = {}
    for share in (False, True):
        trainer.args.share_prompt_prefix = share
        model.zero_grad()
        logps, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, 4, compute_entropy=True)
        (logps * cmask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[share] = (logps.detach(), ent.detach(), grads)
    (lp0, e0, g0), (lp1, e1, g1) = results[False], results[True]
    assert calls == [3, 3] and lp1.shape == lp0.shape == (6, 4)  # one prompt pass per group, on the shared run only
    m = cmask.bool()
    assert torch.allclose(lp1[m], lp0[m], atol=1e-5) and torch.allclose(e1[m], e0[m], atol=1e-5)
    assert any(g.abs().sum() > 0 for g in g0.values())
    for n in g0:
        assert torch.allclose(g1[n], g0[n], atol=1e-5, rtol=1e-4), n


def test_a_grade_head_is_scored_through_its_logits(smoke, splits, tmp_path):
    """With a grade head, the grade token's log-probability is the head's (TRL's fused head would read the LM head's
    row), the same with and without prompt sharing, and every other token's is the LM head's."""
    from she_lib.grade_head import GradeHead
    from she_lib.inference import grade_token_ids

    policy, trainer = _trainer(smoke, splits, tmp_path)
    model, tok = trainer.model, policy.tokenizer
    ids, mask, cmask = _batch(tok.pad_token_id)
    tag, grades = tok("<grade>", add_special_tokens=False).input_ids, grade_token_ids(tok, ["Exact", "Irrelevant"])
    ids[0, -4:] = torch.tensor(tag + [grades[1]])  # row 0's completion (4 tokens): "<grade>Ir"
    torch.manual_seed(1)
    head = GradeHead(tag, grades, 5 * torch.randn(2, model.config.hidden_size))
    model.eval()
    with torch.no_grad():  # by hand, before the head is installed: the LM head's logits, grade columns swapped
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        z = out.logits[:, -5:-1].clone()
        h = out.hidden_states[-1][:, -5:-1]
        z[0, 3, grades] = h[0, 3] @ head.rows.T
        want = torch.log_softmax(z / trainer.temperature, -1).gather(-1, ids[:, -4:, None]).squeeze(-1)
    head.install(model)
    m = cmask.bool()
    for share in (False, True):
        trainer.args.share_prompt_prefix = share
        with torch.no_grad():
            got, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, 4, compute_entropy=True)
        torch.testing.assert_close(got[m], want[m], atol=1e-5, rtol=1e-4)
        assert ent.shape == got.shape
    assert abs(float(want[0, 3]) - float(torch.log_softmax(out.logits[0, -2] / trainer.temperature, -1)[grades[1]])) > 1e-2
