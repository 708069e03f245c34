"""The grade head: its rows give the grades' logits after <grade> and nowhere else, on every path that reads them."""
import json
import shutil

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from she_lib.config import get_profile
from she_lib.grade_head import FILE, GradeHead, GradeHeadProcessor, grade_head_of, tag_ends
from she_lib.inference import generate, grade_probabilities, grade_token_ids, head_logits
from she_lib.labels import ESCI
from she_lib.modeling import build_tiny_model
from fakes import bf16_with_large_logits


def test_tag_ends_marks_the_last_token_of_each_tag():
    ids = torch.tensor([[5, 1, 2, 3, 1, 2, 3], [1, 2, 9, 1, 2, 3, 0]])
    want = [[False, False, False, True, False, False, True], [False, False, False, False, False, True, False]]
    assert tag_ends(ids, torch.tensor([1, 2, 3])).tolist() == want
    assert not tag_ends(ids[:, :2], torch.tensor([1, 2, 3])).any()  # shorter than the tag


@pytest.fixture
def headed(tokenizer):
    torch.manual_seed(0)
    model = build_tiny_model(tokenizer, get_profile("smoke")).eval()
    plain = build_tiny_model(tokenizer, get_profile("smoke")).eval()  # same seed: the same weights
    ids = grade_token_ids(tokenizer, ESCI.words)
    rows = 30 * torch.randn(len(ids), model.config.hidden_size)  # large: the head's grade wins the argmax
    head = GradeHead(tokenizer("<grade>", add_special_tokens=False).input_ids, ids, rows)
    head.install(model)
    return model, plain, head


def test_full_forward_swaps_the_grade_logits_at_the_tag_only(tokenizer, headed):
    model, plain, head = headed
    text = "query: red shoe\n<grade>Exact</grade>\n<grade>"
    enc = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
        base = plain(**enc).logits
    h, at = out.hidden_states[-1], tag_ends(enc.input_ids, torch.tensor(head.tag_ids))[0]
    assert at.sum() == 2  # "<grade>" twice; "</grade>" is another tag
    ids = head.token_ids
    torch.testing.assert_close(out.logits[0, at][:, ids], h[0, at] @ head.rows.T)
    torch.testing.assert_close(out.logits[0, ~at], base[0, ~at])  # elsewhere: the LM head's logits
    rest = [i for i in range(out.logits.shape[-1]) if i not in ids]
    torch.testing.assert_close(out.logits[0, at][:, rest], base[0, at][:, rest])


def test_first_token_read_out_is_the_heads_softmax(tokenizer, headed):
    model, plain, head = headed
    shared = "query: a long shared prompt prefix of many tokens, more than sixteen of them, item"
    prompts = [f"{shared} {i} " + "x" * i + "\n" for i in range(3)]
    got = grade_probabilities(model, tokenizer, prompts, ESCI.words, progress=False)  # common-prefix path
    one = grade_probabilities(model, tokenizer, prompts[:1], ESCI.words, progress=False)  # plain path
    for i, p in enumerate(prompts):
        enc = tokenizer([p + "<grade>"], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            h = plain(**enc, output_hidden_states=True).hidden_states[-1][:, -1]
        np.testing.assert_allclose(got[i], torch.softmax(h @ head.rows.T, -1)[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(one[0], got[0], atol=1e-4)


class _Force(LogitsProcessor):
    """Forces ``tokens`` as the first generated tokens (after the head's processor has run)."""

    def __init__(self, tokens, start):
        self.tokens, self.start = tokens, start

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.start
        if k < len(self.tokens):
            scores = torch.full_like(scores, -1e9)
            scores[:, self.tokens[k]] = 0.0
        return scores


def test_cached_decoding_reads_the_head_after_a_generated_tag(tokenizer, headed):
    model, plain, head = headed
    prompt = "query: red shoe, product: a red shoe. Answer: "
    start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    force = LogitsProcessorList([_Force(head.tag_ids, start)])
    got = generate(model, tokenizer, [prompt], max_new_tokens=4, progress=False, return_ids=True,
                   logits_processor=force, share_common_prefix=False)[0]
    assert got[:3] == head.tag_ids
    # the 4th token from a full forward of everything before it (the hook's path), greedy over the vocabulary
    enc = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids + head.tag_ids])
    with torch.no_grad():
        want = int(model(input_ids=enc).logits[0, -1].argmax())
        other = int(plain(input_ids=enc).logits[0, -1].argmax())
    assert got[3] == want and want in head.token_ids and want != other


def test_processor_leaves_rows_without_the_tag(headed):
    model, _, head = headed
    state = grade_head_of(model)
    state.last = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    ids = torch.tensor([[7] + head.tag_ids, [7, 7, 7, 7]])
    scores = torch.zeros(2, 50000)
    out = GradeHeadProcessor(state)(ids, scores)
    assert out[0, head.token_ids].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert out[0].sum() == 10.0 and not out[1].any()
    with pytest.raises(ValueError, match="already has a grade head"):
        head.install(model)


def test_probe_head_at_the_grade_position_keeps_the_sft_model(trained_sft, splits, tmp_path, smoke):
    from she_lib.grade_probe import GradeProbeConfig
    from she_lib.modeling import load_run
    from she_lib.probe_head import ProbeHeadConfig, write_probe_head
    from she_lib.schema import render_prompt

    run = tmp_path / "sft"
    shutil.copytree(trained_sft, run)
    prof = get_profile("smoke")
    cfg = ProbeHeadConfig(position="grade", probe=GradeProbeConfig(c_grid=(1.0,), chunk=64))
    out = write_probe_head(run, prof, splits["train"], splits["validation"], tmp_path / "head", cfg, progress=False)
    assert (out / FILE).exists() and json.loads((out / "run.json").read_text())["probe_head"]["position"] == "grade"
    sft, head = load_run(run, prof.replace(dtype="float32")), load_run(out, prof.replace(dtype="float32"))
    assert grade_head_of(sft.model) is None and grade_head_of(head.model) is not None
    for a, b in zip(sft.model.state_dict().values(), head.model.state_dict().values()):
        torch.testing.assert_close(a, b)  # the weights are the SFT model's
    # an RL run's adapter on top keeps the head (load_run through init_adapter)
    child = tmp_path / "child"
    shutil.copytree(trained_sft, child)
    info = json.loads((child / "run.json").read_text())
    (child / "run.json").write_text(json.dumps({**info, "init_adapter": "../head"}))
    assert grade_head_of(load_run(child, prof.replace(dtype="float32")).model) is not None
    prompts = [render_prompt(head.tokenizer, r, ESCI, "grade_first") for r in splits["validation"].to_dict("records")]
    p_head = grade_probabilities(head.model, head.tokenizer, prompts, ESCI.words, progress=False)
    p_sft = grade_probabilities(sft.model, sft.tokenizer, prompts, ESCI.words, progress=False)
    assert not np.allclose(p_head, p_sft)
    # RL from it (the shared-prefix rollouts' merged copy carries the head), and its run loads with the head
    from she_lib.evaluate import evaluate_run
    from she_lib.rl import rl_config, train_rl

    rl = train_rl(smoke, "srpo", out, rl_config(smoke, "srpo", beta=0.04), splits=splits)
    assert json.loads((rl / "run.json").read_text())["finished"]
    # the KL anchor's reference is the start, head included: at the first step the fresh LoRA is zero, so KL = 0
    kl = [e["kl"] for e in json.loads((rl / "train_log.json").read_text()) if "kl" in e]
    assert kl and abs(kl[0]) < 1e-6
    assert grade_head_of(load_run(rl, prof.replace(dtype="float32")).model) is not None
    (m,) = evaluate_run(rl, smoke, splits["test"].head(4), modes=("first_token",)).values()
    assert m["n_examples"] == 4
    with pytest.raises(ValueError, match="position"):
        write_probe_head(run, prof, splits["train"], splits["validation"], tmp_path / "bad",
                         ProbeHeadConfig(position="steps"), progress=False)


# ------------------------------------------------------------------------------------------ fp32 read-out
def test_fp32_read_out_takes_h_dot_w_in_fp32_not_the_bf16_logits(tokenizer):
    """On a bf16 model with large grade logits, fp32=True gives softmax(fp32(h) . fp32(w_k)) over the grades (the
    LM head's input h), while the default reads the model's rounded logits, which move P by about 0.01 here."""
    torch.manual_seed(0)
    ids = grade_token_ids(tokenizer, ESCI.words)
    model = bf16_with_large_logits(build_tiny_model(tokenizer, get_profile("smoke")), ids)
    prompts = ["query: red shoe\nproduct: a red shoe\n", "query: lamp\nproduct: a desk lamp, white\n"]
    exact = grade_probabilities(model, tokenizer, prompts, ESCI.words, progress=False, fp32=True)
    model_logits = grade_probabilities(model, tokenizer, prompts, ESCI.words, progress=False)
    w = model.get_output_embeddings().weight.detach()[ids].float()
    for i, p in enumerate(prompts):
        enc = tokenizer([p + "<grade>"], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        h = out.hidden_states[-1][:, -1].float()
        np.testing.assert_allclose(exact[i], torch.softmax(h @ w.T, -1)[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(model_logits[i], torch.softmax(out.logits[0, -1, ids].float(), -1).numpy(),
                                   atol=1e-5)
        assert out.logits[0, -1, ids].float().abs().min() > 16
    assert np.abs(exact - model_logits).max() > 0.005  # the rounding moves P by about 0.01 here


def test_fp32_read_out_of_a_bf16_grade_head_uses_its_rows(tokenizer, headed):
    """Where the head swapped the grade rows (the prompt ends with the tag), the fp32 read-out is softmax(h . r_k)
    with r_k the head's rows, on both the shared-prefix and the plain path."""
    model, plain, head = headed
    model, plain = model.to(torch.bfloat16), plain.to(torch.bfloat16)
    shared = "query: a long shared prompt prefix of many tokens, more than sixteen of them, item"
    prompts = [f"{shared} {i} " + "x" * i + "\n" for i in range(3)]
    got = grade_probabilities(model, tokenizer, prompts, ESCI.words, progress=False, fp32=True)
    one = grade_probabilities(model, tokenizer, prompts[:1], ESCI.words, progress=False, fp32=True)
    for i, p in enumerate(prompts):
        enc = tokenizer([p + "<grade>"], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            h = plain(**enc, output_hidden_states=True).hidden_states[-1][:, -1].float()
        np.testing.assert_allclose(got[i], torch.softmax(h @ head.rows.float().T, -1)[0].numpy(), atol=1e-3)
    np.testing.assert_allclose(one[0], got[0], atol=1e-3)


def test_head_logits_refuses_a_head_with_a_bias(tokenizer):
    model = build_tiny_model(tokenizer, get_profile("smoke"))
    n, d = model.get_output_embeddings().weight.shape
    model.set_output_embeddings(torch.nn.Linear(d, n, bias=True))
    with pytest.raises(ValueError, match="bias-free"):
        head_logits(model, torch.zeros(1, d), [1, 2])


def test_an_fp32_read_out_is_cached_and_named_apart():
    from she_lib.predictions import prediction_file, readout_suffix

    smoke = get_profile("smoke")
    fp32 = smoke.replace(eval_fp32_logits=True)
    plain = prediction_file(smoke, "first_token")
    assert prediction_file(fp32, "first_token") == plain[:-len(".jsonl")] + "_fp32.jsonl"
    assert prediction_file(fp32, "generate") == prediction_file(smoke, "generate")  # decoding is unchanged
    assert (readout_suffix(fp32, "first_token"), readout_suffix(smoke, "first_token")) == ("_fp32", "")
