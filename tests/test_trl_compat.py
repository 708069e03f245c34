"""Tests for she_lib.trl_compat: the pure-torch fused-LM-head fallback and one CPU step of SFT, DPO and GRPO.

Everything is built offline: a tiny Llama from a config and a char-level tokenizer with a ChatML template.
"""

import math
import string

import pytest
import torch

from she_lib import trl_compat
from she_lib.trl_compat import ChunkedLogProbFunction, ensure_trl_cpu_support

ALL_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: tiny tokenizer and model
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors: one intra-op thread is faster, and avoids OpenMP spin-waits when other jobs share the 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # decode by concatenation, no spaces between characters
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML
    return tok


def make_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def cpu_args(tmp_path):
    # TRL configs default to bf16=True and gradient_checkpointing=True: force fp32 and no checkpointing on CPU
    return dict(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", max_steps=1, per_device_train_batch_size=2, logging_steps=1, save_strategy="no",
        learning_rate=1e-3, dataloader_num_workers=0,
    )


def assert_trained(trainer):
    """One optimizer step runs through the fused LM head, the loss is finite and the LoRA weights move."""
    assert ensure_trl_cpu_support()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all("lora_" in n for n in before)
    result = trainer.train()
    assert result.global_step == 1
    assert math.isfinite(result.training_loss)
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "no trainable parameter was updated"
    return result


# ---------------------------------------------------------------------------------------------------------------------
# (1) Numerical contract
# ---------------------------------------------------------------------------------------------------------------------
def reference(hidden, weight, bias, targets, temperature, softcap, logit_scale):
    """Direct full-logits computation, in float64."""
    z = hidden.double() @ weight.double().t() + (0 if bias is None else bias.double())
    z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    log_p = torch.log_softmax(z, -1)
    p = log_p.exp()
    return (
        log_p.gather(-1, targets[:, None]).squeeze(-1),
        -(p * log_p).sum(-1),
        torch.log((p * p).sum(-1)),
        z.mean(-1),
        z.argmax(-1) == targets,
    )


@pytest.mark.parametrize(
    "temperature,softcap,logit_scale,use_bias",
    [(1.0, None, 1.0, False), (0.7, None, 1.0, True), (1.3, 3.0, 0.5, False), (0.9, 2.0, 2.0, True)],
)
def test_fallback_matches_reference(monkeypatch, temperature, softcap, logit_scale, use_bias):
    monkeypatch.setattr(trl_compat, "_MAX_TILE_ELEMENTS", 97 * 5)  # 5 rows per chunk: exercise the chunking
    torch.manual_seed(0)
    N, H, V = 37, 16, 97
    hidden = torch.randn(N, H, requires_grad=True)
    weight = (0.5 * torch.randn(V, H)).requires_grad_()
    bias = torch.randn(V, requires_grad=True) if use_bias else None
    targets = torch.randint(0, V, (N,))
    with torch.no_grad():  # some top-1 hits (softcap, positive scale and temperature keep the argmax)
        targets[:5] = (hidden[:5] @ weight.t() + (0 if bias is None else bias)).argmax(-1)

    out = ChunkedLogProbFunction.apply(hidden, weight, bias, targets, temperature, 32768, softcap, logit_scale,
                                       ALL_OUTPUTS)
    ref = reference(hidden, weight, bias, targets, temperature, softcap, logit_scale)
    for name, got, want in zip(ALL_OUTPUTS, out, ref):
        assert got.shape == (N,), name
        if name == "is_top1":
            assert got.dtype == torch.bool and torch.equal(got, want)
            assert got[:5].all()
        else:
            assert got.dtype == torch.float32, name
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5, msg=name)
    assert not any(x.requires_grad for x in out[2:])

    # Gradients of an arbitrary combination of log-probs and entropy, against autograd of the reference
    g_lp, g_ent = torch.randn(N), torch.randn(N)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    got = torch.autograd.grad((out[0] * g_lp).sum() + (out[1] * g_ent).sum(), leaves)
    want = torch.autograd.grad((ref[0] * g_lp).sum() + (ref[1] * g_ent).sum(), leaves, retain_graph=True)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)

    # Log-probs only (entropy not requested, as in TRL's reference-model heads): other fields None, grads still right
    out = ChunkedLogProbFunction.apply(hidden, weight, bias, targets, temperature, 32768, softcap, logit_scale,
                                       ("log_probs",))
    assert all(x is None for x in out[1:])
    got = torch.autograd.grad(out[0].sum(), leaves)
    want = torch.autograd.grad(ref[0].sum(), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_fallback_empty_and_frozen_weight():
    hidden = torch.randn(0, 8, requires_grad=True)
    weight = torch.randn(11, 8)  # frozen lm_head, as under LoRA
    out = ChunkedLogProbFunction.apply(hidden, weight, None, torch.zeros(0, dtype=torch.long), 1.0, 32768, None, 1.0,
                                       ALL_OUTPUTS)
    assert [x.shape for x in out] == [(0,)] * 5
    (grad,) = torch.autograd.grad(out[0].sum(), hidden)
    assert grad.shape == (0, 8)


def test_ensure_is_idempotent_and_installed():
    import trl.trainer.utils as trl_utils

    try:
        import triton  # noqa: F401
    except ImportError:
        assert ensure_trl_cpu_support() is True
        assert ensure_trl_cpu_support() is True
        assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction
    else:  # Triton present: TRL's kernel is left alone
        assert ensure_trl_cpu_support() is False
        assert trl_utils._ChunkedLogProbFunction is not ChunkedLogProbFunction


def test_fused_head_loss_matches_model_loss(tokenizer, monkeypatch):
    """Through TRL's `add_fused_lm_head`, the fused loss equals the model's own cross-entropy loss."""
    import trl.trainer.utils as trl_utils

    ensure_trl_cpu_support()
    model = make_model(tokenizer)
    ids = torch.tensor([tokenizer("hello world, this is a test")["input_ids"]] * 2)
    labels = ids.clone()
    labels[1, :6] = -100
    expected = model(input_ids=ids, labels=labels).loss
    trl_utils.add_fused_lm_head(model, outputs=ALL_OUTPUTS[:2])
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    assert out.log_probs.shape == (2, ids.shape[1] - 1)

    if trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction:  # the original failure, without the fallback
        monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", None)
        with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'apply'"):
            model(input_ids=ids, labels=labels, fused_lm_head=True)


# ---------------------------------------------------------------------------------------------------------------------
# (2)-(4) One training step of each trainer on CPU with LoRA
# ---------------------------------------------------------------------------------------------------------------------
def test_sft_step(tokenizer, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ensure_trl_cpu_support()
    data = Dataset.from_list([
        {"messages": [{"role": "user", "content": f"add {i} and {i}"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(4)
    ])
    args = SFTConfig(**cpu_args(tmp_path), max_length=64)
    trainer = SFTTrainer(model=make_model(tokenizer), args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config())
    assert_trained(trainer)


def test_dpo_step(tokenizer, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ensure_trl_cpu_support()
    data = Dataset.from_list([
        {"prompt": f"Is {i} even? ", "chosen": "yes" if i % 2 == 0 else "no", "rejected": "maybe"} for i in range(4)
    ])
    args = DPOConfig(**cpu_args(tmp_path), max_length=64)
    trainer = DPOTrainer(model=make_model(tokenizer), args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config())
    assert_trained(trainer)


def test_grpo_step(tokenizer, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    ensure_trl_cpu_support()

    def reward_distinct_chars(completions, **kwargs):  # varies across completions, so advantages are non-zero
        return [float(len(set(c))) for c in completions]

    data = Dataset.from_list([{"prompt": f"Count to {i}: "} for i in range(4)])
    args = GRPOConfig(**cpu_args(tmp_path), num_generations=2, max_completion_length=8, temperature=0.7)
    trainer = GRPOTrainer(model=make_model(tokenizer), reward_funcs=reward_distinct_chars, args=args, train_dataset=data,
                          processing_class=tokenizer, peft_config=lora_config())
    assert_trained(trainer)
