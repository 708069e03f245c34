"""Grade tuning: the split model over cached bottom-layer outputs is the first-token read-out before training;
the cache resumes; the tuned read-out trains, is saved and read back to the same predictions."""
import shutil

import numpy as np
import pytest

from she_lib.grade_tune import (GradeTuneConfig, _batched, _prefix, build_tuner, cached_inputs, evaluate_grade_tune,
                                init_head_from_probe, load_tuned, probabilities, train_grade_tune)
from she_lib.inference import grade_probabilities
from she_lib.labels import ESCI
from she_lib.schema import render_prompt


def test_untuned_model_over_cached_inputs_is_the_first_token_readout(tiny_policy, splits, smoke, tmp_path):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    df = splits["test"].head(7)
    cfg = GradeTuneConfig(chunk=3, batch_size_cache=2)
    ids, pre = _prefix(tmp_path, smoke, tiny_policy, splits["train"], cut=1)  # fixed on the train pairs
    assert len(ids) > 16  # the chat template's system part is shared
    x = cached_inputs(tmp_path, smoke, df, 1, tiny_policy, ids, cfg)
    assert len(list((tmp_path / "inputs_grade_first_cut1").glob("chunk_*.npz"))) == 3  # 7 pairs, 3 a chunk
    lengths = [len(tok(render_prompt(tok, r, ESCI, "grade_first") + "<grade>", add_special_tokens=False).input_ids)
               for r in df.to_dict("records")]
    assert [len(s) for s in x] == [n - len(ids) for n in lengths]
    expected = grade_probabilities(m, tok, [render_prompt(tok, r, ESCI, "grade_first") for r in df.to_dict("records")],
                                   ESCI.words, batch_size=3, progress=False)
    p = probabilities(build_tuner(tiny_policy, 1, pre, ESCI.words), x, batch_size=3)
    np.testing.assert_allclose(p, expected, atol=2e-3)  # float16 cache of the bottom layer's output
    # a second read is served from the cache: no model needed
    again = cached_inputs(tmp_path, smoke, df, 1, None, ids, cfg)
    assert all((a == b).all() for a, b in zip(again, x))
    # the probe head: the un-tuned model then reads out exactly the probe of its own final states
    x_tr = cached_inputs(tmp_path, smoke, splits["train"], 1, tiny_policy, ids, cfg)
    y_tr = splits["train"]["label"].map(ESCI.words.index).to_numpy()
    tuner = build_tuner(tiny_policy, 1, pre, ESCI.words)
    probe = init_head_from_probe(tuner, x_tr, y_tr, x, df["label"].map(ESCI.words.index).to_numpy(), ESCI.words)
    np.testing.assert_allclose(probabilities(tuner, x), probe.probabilities(_batched(tuner.state, x, 8)), atol=1e-5)
    with pytest.raises(ValueError, match="common prompt prefix"):
        cached_inputs(tmp_path / "other", smoke, splits["test"].tail(2), 1, tiny_policy, [7, 7, 7], cfg)


def test_grade_tune_trains_saves_and_reads_back(trained_sft, smoke, splits, tmp_path):
    run = tmp_path / "sft"
    shutil.copytree(trained_sft, run)
    cfg = GradeTuneConfig(top_layers=1, epochs=2, batch_size=8, learning_rate=1e-2, train_pairs_per_query=4)
    with pytest.raises(ValueError, match="top_layers"):
        train_grade_tune(run, smoke, splits["train"], splits["validation"], GradeTuneConfig(top_layers=99))
    model, meta = train_grade_tune(run, smoke, splits["train"], splits["validation"], cfg)
    evals = [e for e in meta["log"] if "eval_macro_f1" in e]
    assert len(evals) == 2 and meta["cut"] == smoke.tiny_layers - 1
    assert (run / "grade_tune" / "adapter_model.safetensors").stat().st_size < 2_000_000
    test = splits["test"].head(12)
    out = evaluate_grade_tune(smoke, run, test, tuned=(model, meta))
    assert out["test"]["scoring"] == "grade_tune" and 0 <= out["test"]["macro_f1"] <= 1
    first = (run / "predictions_test_tune_grade_first.jsonl").read_text()
    again = evaluate_grade_tune(smoke, run, test)  # read back from grade_tune/
    assert again["test"]["macro_f1"] == out["test"]["macro_f1"]
    assert (run / "predictions_test_tune_grade_first.jsonl").read_text() == first
    tuned, _ = load_tuned(run, smoke)
    head = tuned.base_model.model.head.modules_to_save["default"].weight
    untrained = build_tuner(__import__("she_lib.modeling", fromlist=["load_run"]).load_run(run, smoke), meta["cut"],
                            np.zeros((len(meta["prefix_ids"]), head.shape[1])), ESCI.words).head.weight
    assert not np.allclose(head.detach().numpy(), untrained.detach().numpy())  # the head was trained and saved


def test_tune_rows_save_the_read_out_and_load_predictions_finds_it(trained_sft, smoke, splits, tmp_path):
    import json
    from pathlib import Path

    from she_lib.evaluate import load_predictions, tune_rows

    prof = smoke.replace(runs_dir=str(tmp_path / "runs"))
    run = Path(prof.runs_dir) / "sft"
    shutil.copytree(trained_sft, run)
    test = splits["test"].head(10)
    out = tune_rows(prof, run, splits, test, config=GradeTuneConfig(top_layers=1, epochs=1, batch_size=8,
                                                                      train_pairs_per_query=4))
    row = json.loads((Path(prof.results_dir) / "metrics.json").read_text())["sft_tune"]
    assert row["scoring"] == "grade_tune" and row["macro_f1"] == out["test"]["macro_f1"]
    preds = load_predictions(prof, test)
    assert preds["sft_tune"].notna().all() and set(preds["sft_tune"]) <= set(ESCI.words)
