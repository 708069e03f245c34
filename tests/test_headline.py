"""The headline table: which rows it keeps, its exact cells, and the README's copy refreshed between markers."""
import json
from pathlib import Path

from she_lib.headline import BEGIN, END, headline_markdown, main, refresh


def row(f1, lo, hi, scoring="first_token", profile="cpu-full", split="test", made_by=None,
        machine="CPU X, 2 cores, no GPU, torch 2", cm=None):
    out = {"macro_f1": f1, "macro_f1_ci": [lo, hi], "scoring": scoring, "profile": profile, "split": split,
           "machine": machine}
    if cm is not None:  # rows true, columns predicted, the last unparsed
        out["confusion_matrix"] = {"rows_true_cols_pred": cm}
    return dict(out, made_by=made_by) if made_by else out


GPU_RUN = {"id": "20260101-000000-abc", "command": "bash scripts/gpu_run.sh run", "commit": "abc",
           "started": "2026-01-01T00:00:00", "machine": "Intel(R) Xeon(R) Processor (AVX512-BF16/AMX), 16 cores, "
                                                        "NVIDIA H200, torch 2.11.0+cu130"}


def write(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(rows))


def test_headline_table_cells_and_readme_refresh(tmp_path):
    results = tmp_path / "results"
    write(results, {  # an older folder: rows without made_by
        "lexical": row(0.30512, 0.2446, 0.3627, scoring="classifier"),
        "sft": row(0.227, 0.18, 0.27, scoring="generate"),  # decoded read-out: not a headline row
        "sft_first_token": row(0.2092, 0.1826, 0.2322),
        "sft_cumpt": row(0.209, 0.18, 0.23, scoring="cumpt"),
        "sft_prior": row(0.2414, 0.2, 0.28, scoring="prior_corrected"),  # the same probabilities, biases tuned
        "sft_probe": row(0.3512, 0.31, 0.39, scoring="grade_probe"),  # the head refit on the model's states
        "sft_tune": row(0.3601, 0.32, 0.40, scoring="grade_tune"),  # the top layers and head trained on the grade
        "grpo_s1_first_token": row(0.166, 0.145, 0.184),  # a second seed: left out
        "grpo_s1_probe": row(0.17, 0.15, 0.19, scoring="grade_probe"),  # left out too
        "grpo_s1_prior": row(0.17, 0.15, 0.19, scoring="prior_corrected"),  # left out too
        "grpo_first_token": row(0.1661, 0.1449, 0.1841, cm=[[3, 0, 0], [1, 0, 0]]),  # one grade always: kappa 0
        "genrm": {"step_accuracy": 0.75, "profile": "cpu-full"},  # no CI: not a classifier
    })
    write(results / "gpu", {
        # kappa (1/2 - 5/8) / (3/8) (tests/test_labels_metrics.py)
        "lexical": row(0.3254, 0.2516, 0.3957, scoring="classifier", profile="gpu-offline", made_by=GPU_RUN,
                       cm=[[2, 1, 0], [1, 0, 0]]),
        "sft_first_token": row(0.1918, 0.1676, 0.2128, profile="gpu-offline", made_by=GPU_RUN),
    })
    write(results / "gpu" / "esci_us_wide_test", {
        "lexical": row(0.4367, 0.3930, 0.4809, scoring="classifier", profile="gpu-offline",
                       split="external_esci_us_wide", made_by=GPU_RUN)})
    write(results / "cpu", {"lexical": row(0.288, 0.238, 0.330, scoring="classifier", profile="cpu")})  # demo
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\nold table\n{END}\n\nafter\n")

    assert main(["--results", str(results), "--readme", str(readme)]) == 0
    table = (results / "headline.md").read_text().split("\n\n", 1)[1]
    lines = table.splitlines()
    assert lines[:10] == [
        "| method | esci_us test: macro-F1 [95% CI] | esci_us_wide test: macro-F1 [95% CI] | kappa (esci_us / wide) | "
        "results (profile) | run | machine |",
        "|---|---|---|---|---|---|---|",
        "| lexical baseline | 0.325 [0.252, 0.396] | 0.437 [0.393, 0.481] | -0.333 / — | `results/gpu/` (gpu-offline) | "
        "R1 | Intel Xeon (AVX512-BF16/AMX), 16 cores, NVIDIA H200 |",
        "| lexical baseline | 0.305 [0.245, 0.363] | — | — / — | `results/` (cpu-full) | unrecorded | "
        "CPU X, 2 cores, no GPU |",
        "| SFT | 0.209 [0.183, 0.232] | — | — / — | `results/` (cpu-full) | unrecorded | CPU X, 2 cores, no GPU |",
        "| SFT | 0.192 [0.168, 0.213] | — | — / — | `results/gpu/` (gpu-offline) | R1 | "
        "Intel Xeon (AVX512-BF16/AMX), 16 cores, NVIDIA H200 |",
        "| SFT, prior-corrected | 0.241 [0.200, 0.280] | — | — / — | `results/` (cpu-full) | unrecorded | "
        "CPU X, 2 cores, no GPU |",
        "| SFT, grade probe | 0.351 [0.310, 0.390] | — | — / — | `results/` (cpu-full) | unrecorded | "
        "CPU X, 2 cores, no GPU |",
        "| SFT, grade-tuned | 0.360 [0.320, 0.400] | — | — / — | `results/` (cpu-full) | unrecorded | "
        "CPU X, 2 cores, no GPU |",
        "| GRPO | 0.166 [0.145, 0.184] | — | 0.000 / — | `results/` (cpu-full) | unrecorded | CPU X, 2 cores, no GPU |",
    ]
    assert lines[10:] == [
        "", "Runs that made these cells:",
        "- R1: `bash scripts/gpu_run.sh run` at commit abc, 2026-01-01T00:00:00, on Intel(R) Xeon(R) Processor "
        "(AVX512-BF16/AMX), 16 cores, NVIDIA H200, torch 2.11.0+cu130",
        "- unrecorded: rows written before rows carried the run that made them"]
    assert readme.read_text() == f"# title\n\n{BEGIN}\n{table}{END}\n\nafter\n"
    main(["--results", str(results), "--readme", str(readme)])  # idempotent
    assert readme.read_text() == f"# title\n\n{BEGIN}\n{table}{END}\n\nafter\n"


def test_readme_and_results_hold_the_current_table():
    """The committed copies match the committed metrics files (after new results: python -m she_lib.headline)."""
    repo = Path(__file__).resolve().parent.parent
    table = headline_markdown(repo / "results")
    readme = (repo / "README.md").read_text()
    assert refresh(readme, table) == readme, "README's table is stale: run python -m she_lib.headline"
    assert (repo / "results" / "headline.md").read_text().endswith("\n\n" + table)
