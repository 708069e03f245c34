"""Offline model conversion (the EOS trap), the tiny model, dtype choice, batched inference."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from she_lib.config import get_profile
from she_lib.inference import generate, grade_probabilities, grade_token_ids
from she_lib.labels import ESCI
from she_lib.modeling import EOS_TOKEN, convert_smollm2, load_policy, resolve_dtype, unsloth_available


def test_tokenizer_eos_fix(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    # the chat template ends the assistant turn with the token we now call EOS
    s = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                                      tokenize=False)
    assert s.rstrip().endswith(EOS_TOKEN)


@pytest.mark.slow
def test_convert_smollm2_clears_quantizer_and_fixes_eos():
    out = convert_smollm2(get_profile("cpu").cache_dir)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["eos_token_id"] == 2
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    assert (out / "model.safetensors").stat().st_size > 400e6  # dequantized fp32 weights


def test_tiny_policy(tiny_policy):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    assert tiny_policy.backend == "transformers" and not unsloth_available(get_profile("smoke"))
    assert m.config.vocab_size == len(tok) and m.config.num_hidden_layers == 2
    assert sum(p.numel() for p in m.parameters()) < 5e6


def test_training_policy_has_lora(smoke):
    pol = load_policy(smoke, training=True)
    trainable = [n for n, p in pol.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert pol.lora_config.r == smoke.lora_r


def test_resolve_dtype():
    assert resolve_dtype("float32") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype("auto") in (torch.bfloat16, torch.float32)


def test_generate_keeps_input_order(tiny_policy):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    prompts = ["a", "a much longer prompt with many words in it", "mid length prompt"]
    batched = generate(m, tok, prompts, batch_size=2, max_new_tokens=5, progress=False)
    single = [generate(m, tok, [p], batch_size=1, max_new_tokens=5, progress=False)[0] for p in prompts]
    assert batched == single
    multi = generate(m, tok, prompts, batch_size=2, max_new_tokens=3, progress=False, do_sample=True,
                     num_return_sequences=2)
    assert [len(x) for x in multi] == [2, 2, 2]


def test_grade_probabilities_padding_invariant(tiny_policy):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    prompts = ["short", "a considerably longer prompt than the first one"]
    batched = grade_probabilities(m, tok, prompts, ESCI.words, batch_size=2, progress=False)
    single = np.vstack([grade_probabilities(m, tok, [p], ESCI.words, batch_size=1, progress=False)
                        for p in prompts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched.sum(1), 1.0, atol=1e-6)


def test_grade_token_ids_distinct(tokenizer):
    ids = grade_token_ids(tokenizer, ESCI.words)
    assert len(set(ids)) == 4
    with pytest.raises(ValueError, match="share a first token"):
        grade_token_ids(tokenizer, ["Irrelevant", "Ir"])

