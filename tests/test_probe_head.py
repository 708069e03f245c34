"""The probe-headed policy: its grade rows give the probe's log-odds, the rest of the model is the SFT model's."""
import json
import shutil

import numpy as np
import pytest
import torch

from she_lib.config import get_profile
from she_lib.grade_probe import GradeProbeConfig, cached_states, load_probe
from she_lib.inference import answer_states, grade_probabilities, grade_token_ids
from she_lib.labels import ESCI
from she_lib.probe_head import ProbeHeadConfig, constant_direction, probe_log_odds, write_probe_head
from she_lib.schema import render_prompt


def test_constant_direction_finds_a_constant_coordinate():
    h = np.array([[1.0, 2.0], [1.0, -1.0], [1.0, 0.5]])
    u, spread = constant_direction(h, ridge=0.0)
    np.testing.assert_allclose(u, [1.0, 0.0], atol=1e-12)  # u . h = 1 for every row: the first coordinate
    assert spread == pytest.approx(0.0, abs=1e-12)


def test_probe_head_rows_give_the_probes_log_odds(trained_sft, splits, tmp_path):
    from she_lib.modeling import load_run

    run = tmp_path / "sft"
    shutil.copytree(trained_sft, run)
    prof = get_profile("smoke")
    cfg = ProbeHeadConfig(alpha=1.0, probe=GradeProbeConfig(c_grid=(1.0,), chunk=64))
    out = write_probe_head(run, prof, splits["train"], splits["validation"], tmp_path / "head", cfg, progress=False)
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "sft" and info["order"] == "grade_first" and "u_h_std" in info["probe_head"]
    probe = load_probe(run / "grade_probe.joblib")
    assert probe.config.depths == (1.0,)
    # the log-odds: A h + b is the probe's log-probability (its tuned biases added) up to one constant per pair
    x = cached_states(run, prof, splits["validation"], "validation", probe.config, progress=False)
    a, b = probe_log_odds(probe)
    gap = np.log(probe.probabilities(x)) + probe.biases - (x @ a.T + b)
    np.testing.assert_allclose(gap - gap[:, :1], 0.0, atol=1e-5)

    sft, head = load_run(run, prof.replace(dtype="float32")), load_run(out, prof.replace(dtype="float32"))
    ids = grade_token_ids(head.tokenizer, ESCI.words)
    # untied: the input embeddings and every other LM-head row are the SFT model's, the grade rows are new
    emb_s, emb_h = sft.model.get_input_embeddings().weight, head.model.get_input_embeddings().weight
    torch.testing.assert_close(emb_h, emb_s)
    rest = torch.ones(len(emb_s), dtype=torch.bool)
    rest[ids] = False
    w_s, w_h = sft.model.get_output_embeddings().weight, head.model.get_output_embeddings().weight
    torch.testing.assert_close(w_h[rest], w_s[rest])
    assert not torch.allclose(w_h[ids], w_s[ids])
    # the head's read-out differs from the probe's log-odds only through u . h (module doc): exact identity
    prompts = [render_prompt(head.tokenizer, r, ESCI, "grade_first") for r in splits["validation"].to_dict("records")]
    h = answer_states(head.model, head.tokenizer, prompts, layers=(-1,), progress=False).astype(np.float64)
    np.testing.assert_allclose(h, x, atol=1e-4)  # same states: only the LM head changed
    u, _ = constant_direction(cached_states(run, prof, splits["train"], "train", probe.config, progress=False),
                              cfg.ridge)
    want = x @ a.T + (x @ u)[:, None] * b[None, :]
    got = np.log(grade_probabilities(head.model, head.tokenizer, prompts, ESCI.words, progress=False))
    np.testing.assert_allclose(got - got[:, :1], want - want[:, :1], atol=2e-3)
