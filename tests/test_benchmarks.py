"""The speed scripts run end to end on the tiny model (so they cannot rot); their figures are not asserted.

The SFT and RL scripts measure each variant in a child process of their own; their driver (``main``) is called in
this process, which has the stack imported already."""
import json
import runpy
import subprocess
import sys

import pytest


def bench_main(monkeypatch, script, argv):
    """``python benchmarks/<script> ARGV`` with the driver run in this process (sys.path restored afterwards)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    return runpy.run_path(f"benchmarks/{script}", run_name="bench")["main"](argv)


def test_sft_benchmark_runs_on_tiny(tmp_path, monkeypatch):
    out = tmp_path / "b.json"
    bench_main(monkeypatch, "bench_sft.py", ["--tiny", "--steps", "3", "--batch", "2", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["variants"]) == {"plain", "unshared", "optimised"} and res["prefix_sharing_speedup"] > 0
    assert res["variants"]["plain"]["bf16"] is False and res["variants"]["plain"]["gradient_checkpointing"] is True
    assert res["variants"]["optimised"]["gradient_checkpointing"] is False
    assert [res["variants"][k]["share_prompt_prefix"] for k in ("plain", "unshared", "optimised")] == [False, False, True]
    for v in res["variants"].values():
        assert v["tokens_per_s"] > 0 and 0 < v["mfu_6N"] and v["peak_rss_gib"] > 0


def test_inference_benchmark_runs_on_tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench", "--tiny", "--batch-sizes", "2", "--new-tokens", "4", "--matmul", "64",
                "--dtypes", "float32", "bfloat16", "--sample-n", "2", "--sample-prompts", "2", "--repeats", "1",
                "--ft-prompts", "6", "--ft-batch", "3", "--gen-prompts", "4", "--gen-batch", "2", "--gen-tokens", "3",
                "--rollout-prompts", "2", "--rollout-n", "2", "--rollout-tokens", "3", "--out", str(tmp_path / "b.json")])
    runpy.run_path("benchmarks/bench_inference.py", run_name="__main__")
    res = json.loads((tmp_path / "b.json").read_text())
    assert set(res["results"]) == {"float32", "bfloat16"} and res["results"]["float32"]["generate_tok_s_bs2"] > 0
    assert set(res["bf16_speedup"]) == set(res["results"]["float32"])
    s = res["sampling"]
    assert (s["n"], s["prompts"]) == (2, 2) and s["plain_s"] > 0 and s["shared_prefix_s"] > 0
    assert set(res["prefix_sharing"]) == {"float32", "bfloat16"} and res["machine"] and "--tiny" in res["command"]
    p = res["prefix_sharing"]["float32"]
    assert p["common_prefix_tokens"] >= 80 and p["first_token"]["speedup"]["shared"] > 0
    assert p["first_token"]["max_abs_prob_diff"] < 1e-5 and p["first_token"]["same_argmax"] == 1.0
    assert p["greedy_generation"]["identical_completions"] == 1.0 and p["rollouts"]["same_samples"]
    assert p["first_token"]["plain_other_batch_max_abs_prob_diff"] < 1e-5
    assert set(p["rollouts"]["speedup"]) == {"per_prompt", "per_prompt_and_common"}
    assert len(res["load_average_before"]) == len(res["load_average_after"]) == 3


def test_data_scale_benchmark_runs_small(tmp_path):
    out = tmp_path / "b.json"
    subprocess.run([sys.executable, "benchmarks/bench_data_scale.py", "--pairs", "3000", "--data", str(tmp_path / "esci"),
                    "--out", str(out)], check=True, capture_output=True, text=True)
    res = json.loads(out.read_text())
    assert res["synthetic_pairs"] == 3000 and 0.6 * 3000 < res["pairs"] < 0.8 * 3000  # the us share is loaded
    assert res["curated_pairs"] == sum(res["split_pairs"].values()) and res["queries"] > 0
    assert res["peak_rss_gib"] >= res["peak_rss_after_load_gib"] > 0 and res["loaded_frame_gib"] > 0
    assert res["load_s"] > 0 and res["curate_s"] > 0 and res["make_files_s"] > 0
    assert set(res["files_mib"]) == {"shopping_queries_dataset_examples.parquet",
                                     "shopping_queries_dataset_products.parquet", "esci_s_products.jsonl.gz"}


def test_rl_benchmark_runs_on_tiny(tmp_path, monkeypatch):
    out = tmp_path / "b.json"
    assert bench_main(monkeypatch, "bench_rl.py", ["--tiny", "--steps", "2", "--tokens", "8", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    v = res["variants"]
    assert set(v) == {"trl_defaults", "project", "optimised"} and res["speedup_s_per_step"] > 0
    assert res["speedup_s_per_step_vs_project"] > 0 and res["speedup_rollout_tok_s_vs_project"] > 0
    assert v["trl_defaults"]["gradient_checkpointing"] and not v["optimised"]["gradient_checkpointing"]
    assert [v[k]["rollout_engine"] for k in ("trl_defaults", "project", "optimised")] == ["trl", "trl", "auto"]
    assert [v[k]["share_prompt_prefix"] for k in ("trl_defaults", "project", "optimised")] == [False, False, True]
    for x in v.values():
        assert x["s_per_step"] > 0 and 0 < x["generate_s_per_step"] <= x["s_per_step"] and x["completion_tok_s"] > 0
        assert x["rollout_tok_s"] >= x["completion_tok_s"]


def test_rollout_precision_benchmark_runs_on_tiny(tmp_path, monkeypatch):
    out = tmp_path / "b.json"
    assert bench_main(monkeypatch, "bench_rollout_precision.py",
                      ["--tiny", "--prompts", "2", "--samples", "2", "--new-tokens", "6", "--out", str(out)]) == 0
    p = json.loads(out.read_text())["precisions"]
    assert set(p) == {"float32", "bfloat16", "int8"} and p["float32"]["kl_from_fp32_mean"] == 0.0
    assert all(v["new_tok_s"] > 0 and v["kl_from_fp32_mean"] >= 0 for v in p.values())


def test_rollout_precision_benchmark_converts_to_ctranslate2(tmp_path, monkeypatch):
    """The CTranslate2 copies are converted from the in-memory model and, in float32, give its distributions."""
    pytest.importorskip("ctranslate2")
    out = tmp_path / "b.json"
    assert bench_main(monkeypatch, "bench_rollout_precision.py",
                      ["--tiny", "--prompts", "2", "--samples", "2", "--new-tokens", "6", "--out", str(out),
                       "--ctranslate2", "float32", "int8"]) == 0
    res = json.loads(out.read_text())
    p = res["precisions"]
    assert {"ct2_float32", "ct2_int8"} <= set(p) and res["ct2_conversion_s"] > 0
    assert abs(p["ct2_float32"]["kl_from_fp32_mean"]) < 1e-4 and p["ct2_int8"]["new_tok_s"] > 0


def test_decode_benchmark_runs_on_tiny(tmp_path, monkeypatch):
    out = tmp_path / "b.json"
    assert bench_main(monkeypatch, "bench_decode.py", ["--tiny", "--prompts", "3", "--new-tokens", "6",
                                                       "--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    v = res["variants"]
    assert set(v) == {"plain", "sdpa", "project"} and v["plain"]["speedup"] == 1.0
    # the tiny model is fp32: every variant decodes the same greedy tokens, hence the same grades
    assert all(x["seconds"] > 0 and x["new_tok_s"] > 0 and x["same_grade_as_plain"] == 1.0 for x in v.values())
