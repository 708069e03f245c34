"""Every notebook runs top to bottom on the smoke profile (papermill), in order."""
import json
from pathlib import Path

import pytest

from she_lib.config import REPO_ROOT, get_profile
from she_lib.notebooks import NOTEBOOKS, parse_params, run_notebooks

BOOKS = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_the_six_notebooks_exist_without_outputs():
    assert [b[:2] for b in BOOKS] == ["01", "02", "03", "04", "05", "06"]
    for b in BOOKS:
        nb = json.loads((NOTEBOOKS / b).read_text())
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), b
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), b


def test_papermill_reads_every_parameter_of_every_notebook():
    """papermill's parser skips a line it cannot read (a ';' in the comment did), silently dropping that
    parameter from ``papermill --help-notebook``; every assignment of a parameters cell must be read."""
    from papermill.translators import PythonTranslator

    for b in BOOKS:
        cell = next(c for c in json.loads((NOTEBOOKS / b).read_text())["cells"]
                    if "parameters" in c.get("metadata", {}).get("tags", []))
        src = "".join(cell["source"])
        assigned = [line.split("=")[0].strip() for line in src.splitlines() if "=" in line.split("#")[0]]
        assert [p.name for p in PythonTranslator.inspect({"source": src})] == assigned, b


def test_every_notebook_opens_with_the_colab_setup_cell(tmp_path, monkeypatch):
    """The first code cell installs the workbench where she_lib is missing (Colab) and does nothing here."""
    import importlib.util
    import subprocess

    cells = [next(c for c in json.loads((NOTEBOOKS / b).read_text())["cells"] if c["cell_type"] == "code")
             for b in BOOKS]
    assert {c.get("id") for c in cells} == {"colab-setup"} and len({"".join(c["source"]) for c in cells}) == 1
    src = "".join(cells[0]["source"])
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.chdir(tmp_path)
    exec(src, {})  # she_lib importable: nothing runs
    assert calls == []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.delenv("SHE_REPO_URL", raising=False)
    with pytest.raises(RuntimeError, match="SHE_REPO_URL"):
        exec(src, {})
    monkeypatch.setenv("SHE_REPO_URL", "https://example.org/she.git")
    (tmp_path / "she" / "notebooks").mkdir(parents=True)  # what the clone would create
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    exec(src, {})
    assert calls[0] == ["git", "clone", "--depth", "1", "https://example.org/she.git", "she"]
    assert calls[1][1:] == ["-m", "pip", "install", "-q", "-r", "she/requirements-gpu.txt", "-e", "she"]
    assert Path.cwd() == tmp_path / "she" / "notebooks"


def test_parse_params_reads_json_values_else_strings():
    assert parse_params(["a=1", 'modes=["first_token"]', "name=cpu-full", "empty=", "flag=true"]) == {
        "a": 1, "modes": ["first_token"], "name": "cpu-full", "empty": "", "flag": True}
    assert parse_params(None) == {}
    for bad in ("novalue", "2x=1", "=3"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            parse_params([bad])


def test_run_notebooks_passes_parameters_and_merges_timings(tmp_path, monkeypatch):
    import papermill

    import os

    from she_lib.provenance import ENV

    calls = []
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, dst, parameters, **kw: calls.append(
        (Path(src).name, Path(dst), parameters, json.loads(os.environ[ENV])["command"])))
    (tmp_path / "timings.json").write_text(json.dumps({BOOKS[0]: 1.0, BOOKS[4]: 9.0}))
    timings = run_notebooks("smoke", only=["05"], out_dir=tmp_path, params={"trained_modes": ["first_token"]})
    # the kernel sees the job's identity; after the job, the process's environment is as it was
    assert calls == [(BOOKS[4], tmp_path / BOOKS[4], {"profile": "smoke", "trained_modes": ["first_token"]},
                      'python -m she_lib.notebooks --profile smoke --only 05 --param trained_modes=["first_token"]')]
    assert ENV not in os.environ
    assert list(timings) == [BOOKS[4]] and timings[BOOKS[4]] != 9.0
    assert json.loads((tmp_path / "timings.json").read_text()) == {BOOKS[0]: 1.0, BOOKS[4]: timings[BOOKS[4]]}


@pytest.mark.slow
def test_all_notebooks_run_on_smoke(tmp_path):
    timings = run_notebooks("smoke", out_dir=tmp_path)
    assert list(timings) == BOOKS
    prof = get_profile("smoke")
    metrics = json.loads((Path(prof.results_dir) / "metrics.json").read_text())
    assert {"lexical", "zero_shot", "zero_shot_first_token", "sft", "sft_first_token", "sft_steps_first", "dpo",
            "dpo_first_token", "genrm", "grpo", "grpo_first_token", "srpo", "srpo_first_token", "agrl",
            "agrl_first_token"} <= set(metrics)
    assert {"step_accuracy", "rule_violation_rate"} <= set(metrics["srpo"])  # decoded read-outs carry both
    assert {"step_accuracy", "step_f1", "verifier_coverage", "agreement"} <= set(metrics["genrm"])  # notebook 03
    assert "sft_steps_first_first_token" not in metrics  # steps_first runs are read by decoding only
    for name in ("01_label_distribution.png", "02_pass_at_k.png", "02_dpo_training.png", "03_genrm_calibration.png",
                 "04_rl_prompts.png", "04_rl_training.png", "05_confusion.png", "05_cumpt.png", "05_latency.png",
                 "06_first_wrong_step.png", "06_negation.png"):
        assert (Path(prof.results_dir) / "figures" / name).stat().st_size > 1000
    for split in ("train", "validation", "test"):
        assert (Path(prof.processed_dir) / f"{split}.parquet").exists()
    # the tiny model is never right: notebook 04 trained on the difficulty filter's fallback set and said so
    rl_data = json.loads((Path(prof.results_dir) / "rl_data_report.json").read_text())
    assert rl_data["difficulty"]["always_wrong"] == rl_data["difficulty"]["pool"] == 6
    assert rl_data["difficulty"]["fallback_added"] == rl_data["difficulty"]["kept"] == 4
    assert "Prompt-set fallback" in (tmp_path / BOOKS[3]).read_text()
    # the job's report names the job: every row made by this run, the run listed with command, commit and machine
    summary = (Path(prof.results_dir) / "summary.md").read_text()
    assert "(this run): `python -m she_lib.notebooks --profile smoke`" in summary and "not this run" not in summary.split(
        "Rows marked")[0]
    assert all(m["made_by"]["command"] == "python -m she_lib.notebooks --profile smoke" for m in metrics.values())
    assert Path(prof.results_dir).is_relative_to(REPO_ROOT / "results" / "smoke")
