"""Run the ordered notebooks top to bottom with papermill: ``python -m she_lib.notebooks --profile cpu``.

Executed copies go to ``results/notebooks/<profile>/`` (outputs never go back into ``notebooks/``); the
wall time of each notebook is written beside them in ``timings.json`` (merged over runs of a subset, ``--only``).
Extra papermill parameters: ``--param NAME=VALUE`` (VALUE read as JSON, else as a string), e.g.
``--only 05 --param 'trained_modes=["first_token"]'``.

Run identity (she_lib.provenance): the runner makes one identity for the whole job and hands it to every kernel,
so each row the job writes to ``metrics.json`` names this command, commit, machine and start time. A full run (no
``--only``) starts its profile's ``metrics.json`` empty (the earlier file is kept as ``metrics.previous.json``), so
its report shows only what it made, and a stage that failed shows as missing. A run of ``--only`` some notebooks
keeps the earlier rows and its ``summary.md`` marks each one it did not make as *not this run*.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import REPO_ROOT, get_profile
from .provenance import job

NOTEBOOKS = REPO_ROOT / "notebooks"


def parse_params(items: list[str] | None) -> dict:
    """``["a=1", 'b=["x"]', "c=text"]`` -> ``{"a": 1, "b": ["x"], "c": "text"}`` (JSON where it parses)."""
    params = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--param {item!r}: expected NAME=VALUE with NAME a Python identifier")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


def run_notebooks(profile: str = "cpu", only: list[str] | None = None, out_dir: str | Path | None = None,
                  log_output: bool = False, params: dict | None = None) -> dict[str, float]:
    """Execute every notebook (or those whose name starts with one of ``only``) with ``profile`` and ``params``
    as papermill parameters; return seconds each."""
    import papermill as pm

    command = " ".join(["python -m she_lib.notebooks --profile", profile, *(["--only", *only] if only else []),
                        *(f"--param {k}={json.dumps(v)}" for k, v in (params or {}).items())])
    metrics = Path(get_profile(profile).results_dir) / "metrics.json"
    if not only and metrics.exists():  # a full job reports only what it makes
        metrics.replace(metrics.with_name("metrics.previous.json"))
    out = Path(out_dir or REPO_ROOT / "results" / "notebooks" / profile)
    out.mkdir(parents=True, exist_ok=True)
    books = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
                   if not only or any(p.name.startswith(o) for o in only))
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    timings = {k: v for k, v in timings.items() if k not in {nb.name for nb in books}}
    with job(command) as run:  # the kernels inherit the job's identity
        print(f"[{profile}] run {run['id']} on {run['machine']}", flush=True)
        for nb in books:
            t0 = time.time()
            print(f"[{profile}] {nb.name} ...", flush=True)
            pm.execute_notebook(str(nb), str(out / nb.name), parameters={"profile": profile, **(params or {})},
                                cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False, log_output=log_output)
            timings[nb.name] = round(time.time() - t0, 1)
            print(f"[{profile}] {nb.name} done in {timings[nb.name]} s", flush=True)
    timings_file.write_text(json.dumps(dict(sorted(timings.items())), indent=2))
    return {nb.name: timings[nb.name] for nb in books}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m she_lib.notebooks", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 05")
    ap.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    ap.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE", help="papermill parameter (JSON value)")
    args = ap.parse_args(argv)
    timings = run_notebooks(args.profile, args.only, log_output=args.log_output, params=parse_params(args.param))
    print(f"all notebooks done in {sum(timings.values()):.0f} s: {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
