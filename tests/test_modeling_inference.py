"""Offline model conversion (the EOS trap), the tiny model, dtype choice, batched inference."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from she_lib.config import get_profile
from she_lib.inference import decode_attention, generate, generation_attention, grade_probabilities, grade_token_ids
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


def test_decode_attention_same_greedy_tokens_and_restored(tiny_policy):
    """Eager attention while generating (the bf16 CPU default) gives the tokens SDPA gives in fp32, and the model
    gets its own implementation back afterwards."""
    import copy

    m, tok = copy.deepcopy(tiny_policy.model), tiny_policy.tokenizer
    m.set_attn_implementation("sdpa")
    prompts = ["a", "a much longer prompt with many words in it", "mid length prompt"]
    sdpa = generate(m, tok, prompts, batch_size=3, max_new_tokens=8, progress=False, return_ids=True, attention=None)
    eager = generate(m, tok, prompts, batch_size=3, max_new_tokens=8, progress=False, return_ids=True,
                     attention="eager")
    assert eager == sdpa and m.config._attn_implementation == "sdpa"
    with decode_attention(m, "eager"):
        assert m.config._attn_implementation == "eager"
    assert m.config._attn_implementation == "sdpa"
    assert generation_attention(m) is None and generation_attention(m, "sdpa") == "sdpa"  # fp32: left as it is
    assert generation_attention(m.to(torch.bfloat16)) == "eager"  # bf16 on the CPU


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



# ------------------------------------------------------------------------------------- common-prefix cache
@pytest.fixture(scope="module")
def chat_prompts(tokenizer):
    """Real chat prompts (same system part, different lengths), longest and shortest included."""
    from she_lib.data import prepare_splits
    from she_lib.schema import render_prompt

    prof = get_profile("smoke")
    test = prepare_splits(prof, write=False)[0]["test"]
    return [render_prompt(tokenizer, r, ESCI, prof.order) for r in test.to_dict("records")][:12]


def _forward_shapes(model):
    """Records the input_ids shape of every forward of ``model``; call the result to remove the hook."""
    shapes = []
    h = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                        with_kwargs=True)
    return shapes, h.remove


def test_common_prefix_length():
    from she_lib.inference import common_prefix_length

    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # every row keeps a token of its own
    assert common_prefix_length([[1, 2], [3, 2]]) == 0 and common_prefix_length([[7]]) == 0
    assert common_prefix_length([]) == 0


def test_shared_prefix_probabilities_match_plain(tiny_policy, chat_prompts):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    lengths = {len(tok(p + "<grade>", add_special_tokens=False).input_ids) for p in chat_prompts}
    assert len(lengths) > 3  # suffixes of different lengths: pads sit between prefix and suffix
    plain = grade_probabilities(m, tok, chat_prompts, ESCI.words, batch_size=5, progress=False,
                                share_common_prefix=False)
    shapes, remove = _forward_shapes(m)
    shared = grade_probabilities(m, tok, chat_prompts, ESCI.words, batch_size=5, progress=False)
    remove()
    np.testing.assert_allclose(shared, plain, atol=1e-5)
    # the shared path ran: per batch one batch-1 forward over the system part, then the suffixes only
    assert [s[0] for s in shapes] == [1, 5, 1, 5, 1, 2] and shapes[0][1] >= 80
    assert max(s[1] for s in shapes[1::2]) < max(lengths) - 60
    # duplicated prompts (the common prefix is all but the last token) and one-prompt batches
    dup = [chat_prompts[0]] * 3
    np.testing.assert_allclose(grade_probabilities(m, tok, dup, ESCI.words, progress=False),
                               np.repeat(plain[:1], 3, 0), atol=1e-5)
    np.testing.assert_allclose(grade_probabilities(m, tok, chat_prompts[:3], ESCI.words, batch_size=1, progress=False),
                               plain[:3], atol=1e-5)


def test_no_common_prefix_falls_back(tiny_policy):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    prompts = ["short", "a considerably longer prompt than the first one", "mid length prompt here"]
    shapes, remove = _forward_shapes(m)
    shared = grade_probabilities(m, tok, prompts, ESCI.words, batch_size=3, progress=False)
    texts = generate(m, tok, prompts, batch_size=3, max_new_tokens=4, progress=False)
    remove()
    assert all(s[0] == 3 for s in shapes)  # no batch-1 prefix forward
    np.testing.assert_allclose(shared, grade_probabilities(m, tok, prompts, ESCI.words, batch_size=3, progress=False,
                                                           share_common_prefix=False), atol=1e-6)
    assert texts == generate(m, tok, prompts, batch_size=3, max_new_tokens=4, progress=False,
                             share_common_prefix=False)


def test_unsloth_forward_takes_the_plain_path(tiny_policy, chat_prompts, monkeypatch):
    from she_lib.inference import _encode_shared

    m, tok = tiny_policy.model, tiny_policy.tokenizer
    assert _encode_shared(m, tok, chat_prompts[:2], m.device) is not None
    fwd = type(m).forward

    def patched(self, *a, **k):
        return fwd(self, *a, **k)

    patched.__module__ = "unsloth.models.llama"
    monkeypatch.setattr(type(m), "forward", patched)
    assert _encode_shared(m, tok, chat_prompts[:2], m.device) is None


def test_shared_prefix_greedy_generation_is_token_identical(tiny_policy, chat_prompts):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    kw = dict(batch_size=5, max_new_tokens=12, min_new_tokens=12, progress=False)
    plain = generate(m, tok, chat_prompts, share_common_prefix=False, **kw)
    shapes, remove = _forward_shapes(m)
    shared = generate(m, tok, chat_prompts, **kw)
    remove()
    assert shared == plain
    assert shapes[0][0] == 1 and shapes[1][0] == 5 and shapes[1][1] < shapes[0][1] + 200
    # the random tiny model's greedy text is uninformative, so compare what greedy decoding reads: each step's
    # logits (prefill over [prefix | pads | suffix], then decoding against that cache) and the chosen token ids
    from she_lib.inference import _encode, _encode_shared

    batch = chat_prompts[:4]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, return_dict_in_generate=True,
              output_logits=True)
    enc = _encode(tok, batch, m.device)
    a = m.generate(**enc, **kw)
    senc, cache = _encode_shared(m, tok, batch, m.device)
    b = m.generate(**senc, past_key_values=cache, **kw)
    assert torch.equal(a.sequences[:, enc["input_ids"].shape[1]:], b.sequences[:, senc["input_ids"].shape[1]:])
    la, lb = torch.stack(a.logits), torch.stack(b.logits)
    assert (la[0, 0] - la[0, 1]).abs().max() > 1e-3  # rows differ, so a row mix-up would show
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-5)


def test_shared_prefix_sampling_matches_plain(tiny_policy, chat_prompts):
    """n samples per prompt: common prefix once per batch, each prompt once per n samples, same seed, same samples
    as HF generate's n separate prefills."""
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    out = []
    for share, common in ((False, False), (True, True), (False, True), (True, False)):
        torch.manual_seed(11)
        out.append(generate(m, tok, chat_prompts[:6], batch_size=4, max_new_tokens=6, do_sample=True,
                            num_return_sequences=3, progress=False, share_prefix=share, share_common_prefix=common))
    assert all(o == out[0] for o in out[1:]) and [len(x) for x in out[0]] == [3] * 6
