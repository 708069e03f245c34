"""Evaluation harness (she_lib.evaluate, predictions, results): scoring, metrics.json merging, resumable predictions,
the CLI."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from she_lib.data import load_splits
from she_lib.evaluate import main
from she_lib.predictions import predict_llm, read_predictions
from she_lib.results import save_metrics, score


def frame():
    return pd.DataFrame({"example_id": list("abcd"), "query": ["q1", "q1", "Q2", "q2"],
                         "label": ["Exact", "Irrelevant", "Exact", "Substitute"]})


def test_score_counts_unparsed_and_queries(smoke):
    preds = pd.DataFrame({"example_id": list("dcba"), "pred": ["Substitute", None, "Irrelevant", "Exact"],
                          "well_formed": [True, False, True, True]})
    m = score(frame(), preds, smoke, split="test", model="m", scoring="generate")
    assert m["accuracy"] == pytest.approx(0.75) and m["parse_failure_rate"] == pytest.approx(0.25)
    assert m["n_queries"] == 2 and m["n_examples"] == 4 and m["well_formed_rate"] == pytest.approx(0.75)
    # Exact: tp 1 of 2 true, 1 predicted -> F1 2/3; Irrelevant, Substitute 1; Complement 0 -> (2/3+2)/4
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    assert m["macro_f1_ci"][0] <= m["macro_f1"] <= m["macro_f1_ci"][1]
    for key in ("per_class_f1", "split", "profile", "model", "machine", "accuracy_ci"):
        assert key in m


def test_save_metrics_merges(tmp_path):
    save_metrics(tmp_path, "a", {"macro_f1": 0.1})
    save_metrics(tmp_path, "b", {"macro_f1": 0.2})
    save_metrics(tmp_path, "a", {"macro_f1": 0.3})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert {k: {f: v for f, v in m.items() if f != "made_by"} for k, m in saved.items()} == {
        "a": {"macro_f1": 0.3}, "b": {"macro_f1": 0.2}}
    assert saved["a"]["made_by"] == saved["b"]["made_by"] and set(saved["a"]["made_by"]) == {
        "id", "command", "commit", "machine", "started"}


@pytest.mark.parametrize("mode", ["generate", "first_token"])
def test_predict_llm_resumes_from_cache(tiny_policy, smoke, tmp_path, monkeypatch, mode):
    df = load_splits(smoke)["test"].head(6)
    cache = tmp_path / "pred.jsonl"
    prof = smoke.replace(eval_batch_size=1)  # chunks of 4 examples
    first = predict_llm(tiny_policy.model, tiny_policy.tokenizer, df, prof, mode, cache, progress=False)
    assert len(cache.read_text().splitlines()) == 6 and list(first["example_id"]) == list(df["example_id"])
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:4]) + "\n")  # as if stopped after the first chunk
    calls = []
    import she_lib.inference as inf
    real = inf.generate if mode == "generate" else inf.grade_probabilities
    monkeypatch.setattr(inf, real.__name__, lambda m, t, prompts, *a, **k: calls.append(len(prompts)) or real(
        m, t, prompts, *a, **k))
    again = predict_llm(tiny_policy.model, tiny_policy.tokenizer, df, prof, mode, cache, progress=False)
    assert calls == [2]  # only the two missing examples were recomputed
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), again.drop(columns="seconds"))  # timings differ
    assert again["seconds"].head(4).tolist() == first["seconds"].head(4).tolist()  # read back from the cache


@pytest.mark.parametrize("mode", ["generate", "first_token"])
def test_predict_llm_shares_the_system_prefix(tiny_policy, smoke, mode, monkeypatch):
    """Evaluation runs the batch's common prefix (the system part) once at batch size 1, then the suffixes; the
    predictions are those of the plain path."""
    import she_lib.inference as inf

    m, tok = tiny_policy.model, tiny_policy.tokenizer
    df = load_splits(smoke)["test"].head(6)
    prof = smoke.replace(eval_batch_size=3, eval_max_new_tokens=4)
    shapes = []
    h = m.register_forward_pre_hook(lambda mod, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    shared = predict_llm(m, tok, df, prof, mode, None, progress=False)
    h.remove()
    assert shapes[0][0] == 1 and shapes[0][1] >= 80 and shapes[1][0] == 3
    real = inf.generate if mode == "generate" else inf.grade_probabilities
    monkeypatch.setattr(inf, real.__name__, lambda *a, **k: real(*a, **{**k, "share_common_prefix": False}))
    plain = predict_llm(m, tok, df, prof, mode, None, progress=False)
    cols = [c for c in plain if c != "seconds"]
    if mode == "generate":
        pd.testing.assert_frame_equal(shared[cols], plain[cols])
    else:
        pd.testing.assert_frame_equal(shared[cols], plain[cols], atol=1e-5, check_exact=False)


def test_cli_lexical_and_zero_shot_on_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("she_lib.config.PROFILES", _tmp_profiles(tmp_path))
    assert main(["--baseline", "lexical", "--profile", "smoke", "--save"]) == 0
    assert main(["--baseline", "zero_shot", "--profile", "smoke", "--mode", "first_token", "--limit", "8"]) == 0
    out = capsys.readouterr().out
    assert "lexical" in out and "zero_shot_first_token" in out
    saved = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert set(saved) == {"lexical"}  # zero_shot ran without --save
    run = tmp_path / "runs" / "lexical"
    assert main(["--run", str(run), "--profile", "smoke", "--data", "data_samples/esci_us", "--limit", "50"]) == 0
    table = capsys.readouterr().out.splitlines()  # columns ... n_examples n_queries; one row: the lexical run
    assert table[0].split()[-2:] == ["n_examples", "n_queries"] and len(table) == 2
    assert table[1].split()[0] == "lexical" and table[1].split()[-2] == "50"  # the --limit on the external folder


def _tmp_profiles(tmp_path):
    from she_lib.config import PROFILES

    return {**PROFILES, "smoke": PROFILES["smoke"].replace(
        results_dir=str(tmp_path / "results"), runs_dir=str(tmp_path / "runs"),
        processed_dir=str(tmp_path / "processed"))}


def test_write_summary_reads_every_method(tmp_path, smoke):
    preds = pd.DataFrame({"example_id": list("abcd"), "pred": ["Exact", "Irrelevant", "Exact", "Exact"]})
    m = score(frame(), preds, smoke, split="test", model="m", scoring="generate", seconds=1.0)
    save_metrics(tmp_path, "x", m)
    save_metrics(tmp_path, "y", dict(m, accuracy=0.5))
    from she_lib.results import write_summary
    from she_lib.labels import ESCI

    t = write_summary(tmp_path, ESCI.words)
    assert list(t.index) == ["x", "y"] and t.loc["x", "accuracy"] == 0.75 and t.loc["y", "accuracy"] == 0.5
    text = (tmp_path / "summary.md").read_text()
    assert "| x " in text and "Runs that made these rows:" in text and "F1 Complement" in text
    assert t["run"].tolist() == ["R1", "R1"] and "not this run" not in text  # no job: rows labelled, none marked


def test_report_marks_rows_of_another_run(tmp_path, smoke, monkeypatch):
    """A metrics file holding a row of an earlier run (another machine) and one of this job: the summary marks the
    earlier row in the table itself and names both runs under it; an unstamped row is marked too."""
    from she_lib import provenance
    from she_lib.results import write_summary
    from she_lib.labels import ESCI

    m = score(frame(), pd.DataFrame({"example_id": list("abcd"), "pred": ["Exact"] * 4}), smoke, split="test")
    old = {"id": "20260101-000000-abc1234", "command": "python -m she_lib.rl --method srpo --profile cpu",
           "commit": "abc1234", "machine": "Other CPU (no fast bf16), 2 cores, no GPU", "started": "2026-01-01T00:00:00"}
    save_metrics(tmp_path, "srpo_first_token", dict(m, made_by=old))
    save_metrics(tmp_path, "legacy", {k: v for k, v in m.items()})
    data = json.loads((tmp_path / "metrics.json").read_text())
    del data["legacy"]["made_by"]
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    monkeypatch.setenv(provenance.ENV, "")  # so the job's identity is undone after the test
    job = provenance.start_run("python -m she_lib.notebooks --profile smoke")
    save_metrics(tmp_path, "sft_first_token", m)
    t = write_summary(tmp_path, ESCI.words)
    assert t.loc["sft_first_token", "run"] == "this run"
    assert t.loc["srpo_first_token", "run"] == "R1 (not this run)"
    assert t.loc["legacy", "run"] == "unrecorded (not this run)"
    text = (tmp_path / "summary.md").read_text()
    assert "R1 (not this run)" in text and "not this run* were made by another command" in text
    assert "- R1: `python -m she_lib.rl --method srpo --profile cpu` at commit abc1234" in text
    assert f"- R2 (this run): `python -m she_lib.notebooks --profile smoke` at commit {job['commit']}" in text
    assert "Other CPU" in text and job["machine"] in text


def test_cli_saves_external_data_in_its_own_results_folder(tmp_path, monkeypatch):
    """A whole ESCI folder scored with --save lands in <results_dir>/<folder name>/, never in the profile's table;
    --report reads the profile's split only."""
    monkeypatch.setattr("she_lib.config.PROFILES", _tmp_profiles(tmp_path))
    ext = tmp_path / "my_esci"
    ext.symlink_to(Path("data_samples/esci_us").resolve())
    assert main(["--baseline", "lexical", "--profile", "smoke", "--data", str(ext), "--limit", "40", "--save"]) == 0
    saved = json.loads((tmp_path / "results" / "my_esci" / "metrics.json").read_text())
    assert set(saved) == {"lexical"} and saved["lexical"]["split"] == "external_my_esci"
    assert saved["lexical"]["n_examples"] == 40
    assert not (tmp_path / "results" / "metrics.json").exists()
    with pytest.raises(SystemExit):
        main(["--report", "--profile", "smoke", "--data", str(ext)])
    # --split with --data: that query split of the folder (data.folder_splits), in <folder name>_<split>/
    assert main(["--baseline", "lexical", "--profile", "smoke", "--data", str(ext), "--split", "test", "--limit",
                 "40", "--save"]) == 0
    saved = json.loads((tmp_path / "results" / "my_esci_test" / "metrics.json").read_text())
    assert saved["lexical"]["n_examples"] == 40 and saved["lexical"]["split"] == "external_my_esci"


def test_per_query_keeps_every_query():
    from she_lib.predictions import per_query

    df = pd.DataFrame({"query": ["a", "A", "a", "b", "c", "c"], "example_id": list("123456")})
    # sha1("0:<id>") begins 2725fd8c, 24977969, 1a6e9a54 for ids 1, 2, 3 of query "a" (compared lower-cased):
    # ids 3 and 2 come first; rows are returned in stored order. Seed 1 picks by other hashes.
    assert per_query(df, 2)["example_id"].tolist() == ["2", "3", "4", "5", "6"]
    # seed 1: sha1("1:<id>") begins 3e774731, f9adeea0, a28b1e3e for ids 1, 2, 3: ids 1 and 3 come first
    assert per_query(df, 2, seed=1)["example_id"].tolist() == ["1", "3", "4", "5", "6"]
    assert per_query(df, None) is df


def test_summary_skips_non_classifier_entries(tmp_path, smoke):
    from she_lib.results import write_summary

    m = score(pd.DataFrame({"example_id": ["1"], "label": ["Exact"], "query": ["q"]}),
              pd.DataFrame({"example_id": ["1"], "pred": ["Exact"]}), smoke)
    save_metrics(tmp_path, "sft", m)
    save_metrics(tmp_path, "genrm", {"step_accuracy": 0.9})  # a reward model's entry, not a classifier's
    assert write_summary(tmp_path, ["Exact", "Substitute", "Complement", "Irrelevant"]).index.tolist() == ["sft"]


def test_steps_first_runs_are_read_by_decoding_only(tmp_path, smoke, monkeypatch):
    from she_lib import evaluate

    run = tmp_path / "sft_steps_first"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "sft", "order": "steps_first"}))
    seen = []
    monkeypatch.setattr("she_lib.modeling.load_run", lambda r, p: type("P", (), {"model": None, "tokenizer": None}))
    monkeypatch.setattr(evaluate, "predict_llm", lambda m, t, df, p, mode, cache: seen.append((p.order, mode)) or
                        pd.DataFrame({"example_id": df["example_id"], "pred": "Exact"}))
    df = pd.DataFrame({"example_id": ["1", "2"], "label": ["Exact", "Irrelevant"], "query": ["q", "r"]})
    out = evaluate.evaluate_run(run, smoke, df, modes=("generate", "first_token"), archive=tmp_path / "results")
    assert seen == [("steps_first", "generate")] and list(out) == ["sft_steps_first"]
    # with a results folder the read-out is archived under the method's name (predictions.archive_predictions)
    assert list(read_predictions(tmp_path / "results" / "predictions" / "sft_steps_first.jsonl.gz")["pred"]) == [
        "Exact", "Exact"]


def test_prediction_seconds_survive_the_cache(tiny_policy, tmp_path):
    """Each cached row keeps its share of its chunk's wall time, so re-reading a cache reports the original cost."""
    import pandas as pd

    from she_lib.config import get_profile
    from she_lib.data import prepare_splits
    from she_lib.predictions import predict_llm, prediction_seconds

    prof = get_profile("smoke")
    df = prepare_splits(prof, write=False)[0]["test"].head(5)
    cache = tmp_path / "p.jsonl"
    first = predict_llm(tiny_policy.model, tiny_policy.tokenizer, df, prof, "first_token", cache, progress=False)
    again = predict_llm(tiny_policy.model, tiny_policy.tokenizer, df, prof, "first_token", cache, progress=False)
    assert prediction_seconds(first) == prediction_seconds(again) is not None and first["seconds"].gt(0).all()
    assert prediction_seconds(pd.DataFrame({"pred": ["Exact"]})) is None  # a cache written before the timing
    assert prediction_seconds(pd.DataFrame({"seconds": [0.5, None]})) is None


def test_shipped_adapter_is_complete_and_small():
    """models/ ships the SFT adapter in bf16 (<= 12 MB) with what load_run needs, its grade probe and a model card."""
    from safetensors import safe_open

    from she_lib.config import REPO_ROOT, get_profile

    folder = REPO_ROOT / "models" / "smollm2-135m-she-sft"
    weights = folder / "adapter_model.safetensors"
    assert weights.stat().st_size <= 12 * 2 ** 20 and (folder / "README.md").exists()
    with safe_open(str(weights), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and set(cfg["target_modules"]) == set(get_profile("cpu").lora_target_modules)
    info = json.loads((folder / "run.json").read_text())
    assert info["kind"] == "sft" and info["order"] == "grade_first" and info["finished"] and "init_adapter" not in info
    assert isinstance(info["prompt_evidence"], bool)  # read in the prompt it was trained on, whatever the profile says
    from she_lib.grade_probe import load_probe

    probe = load_probe(folder / "grade_probe.joblib")  # the read-out the model card reports
    assert probe.words == ["Exact", "Substitute", "Complement", "Irrelevant"] and len(probe.config.depths) == 3


def test_evaluate_an_exported_adapter_folder_on_smoke(tmp_path, monkeypatch, capsys, trained_sft):
    """The models/ path end to end on smoke: a trained run exported in bf16 (runs.export_adapter, what
    scripts/gpu_run.sh ships) is scored by ``evaluate --run <folder>`` like the run itself."""
    import torch
    from safetensors.torch import load_file

    from she_lib.runs import export_adapter

    import shutil

    from she_lib.config import get_profile
    from she_lib.grade_probe import GradeProbeConfig, load_probe, train_probe

    monkeypatch.setattr("she_lib.config.PROFILES", _tmp_profiles(tmp_path))
    run = tmp_path / "sft"
    shutil.copytree(trained_sft, run)
    splits = load_splits(get_profile("smoke"))
    probe = train_probe(run, get_profile("smoke"), splits["train"], splits["validation"],
                        GradeProbeConfig(train_pairs_per_query=4, c_grid=(0.1,)), progress=False)
    shipped = export_adapter(run, tmp_path / "models" / "tiny-sft")
    assert sorted(p.name for p in shipped.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "grade_probe.joblib", "run.json", "train_log.json"]
    assert load_probe(shipped / "grade_probe.joblib").c == probe.c
    trained, exported = (load_file(r / "adapter_model.safetensors") for r in (trained_sft, shipped))
    assert exported.keys() == trained.keys() and {v.dtype for v in exported.values()} == {torch.bfloat16}
    assert all(torch.equal(exported[k], trained[k].to(torch.bfloat16)) for k in trained)  # the weights, cast
    assert main(["--run", str(shipped), "--profile", "smoke", "--mode", "first_token", "--limit", "8"]) == 0
    assert "tiny-sft_first_token" in capsys.readouterr().out
    # the shipped probe scores the pairs from the model's states: its predictions are the probe's on those states
    assert main(["--run", str(shipped), "--profile", "smoke", "--mode", "probe", "--limit", "8"]) == 0
    assert "tiny-sft_probe" in capsys.readouterr().out
    states = next(shipped.glob("states_test_*"))
    preds = pd.read_json(shipped / "predictions_test_probe_grade_first.jsonl", lines=True, dtype={"example_id": str})
    x = np.concatenate([np.load(f)["states"] for f in sorted(states.glob("*.npz"))])
    assert len(preds) == 8 and preds["pred"].tolist() == probe.predict(x).tolist()


@pytest.mark.parametrize("trained_with", [True, False])
def test_runs_are_read_with_the_prompt_they_were_trained_on(tmp_path, smoke, monkeypatch, trained_with):
    from she_lib import evaluate

    run = tmp_path / "sft"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "sft", "order": "grade_first", "prompt_evidence": trained_with}))
    seen = []
    monkeypatch.setattr("she_lib.modeling.load_run", lambda r, p: type("P", (), {"model": None, "tokenizer": None}))
    monkeypatch.setattr(evaluate, "predict_llm", lambda m, t, df, p, mode, cache: seen.append(
        (p.prompt_evidence, df["evidence"].tolist() if "evidence" in df else None)) or
        pd.DataFrame({"example_id": df["example_id"], "pred": "Exact"}))
    df = pd.DataFrame({"example_id": ["1"], "label": ["Exact"], "query": ["red shoes"],
                       "matched_terms": [["red"]], "missing_terms": [["shoes"]], "negation_hits": [[]]})
    evaluate.evaluate_run(run, smoke, df, modes=("first_token",))
    evaluate.evaluate_run(run, smoke, df.assign(evidence="x"), modes=("first_token",))
    expect = (True, ["found: red; missing: shoes"]) if trained_with else (False, None)
    assert seen == [expect, (True, ["x"]) if trained_with else expect]


def test_cli_saves_fp32_read_outs_apart(tmp_path, monkeypatch):
    """--fp32-logits with --save writes into <results_dir>/fp32/ and, with --data, into fp32/<folder>_<split>/: the
    committed model-precision tables are never touched."""
    monkeypatch.setattr("she_lib.config.PROFILES", _tmp_profiles(tmp_path))
    ext = tmp_path / "my_esci"
    ext.symlink_to(Path("data_samples/esci_us").resolve())
    assert main(["--baseline", "lexical", "--profile", "smoke", "--fp32-logits", "--save"]) == 0
    assert main(["--baseline", "lexical", "--profile", "smoke", "--data", str(ext), "--split", "test",
                 "--limit", "40", "--fp32-logits", "--save"]) == 0
    assert set(json.loads((tmp_path / "results" / "fp32" / "metrics.json").read_text())) == {"lexical"}
    assert (tmp_path / "results" / "fp32" / "my_esci_test" / "metrics.json").exists()
    assert not (tmp_path / "results" / "metrics.json").exists() and not (tmp_path / "results" / "my_esci_test").exists()
