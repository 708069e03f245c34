"""Run the ordered notebooks top to bottom with papermill: ``python -m she_lib.notebooks --profile cpu``.

Executed copies go to ``results/notebooks/<profile>/`` (outputs never go back into ``notebooks/``); the
wall time of each notebook is written beside them in ``timings.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def run_notebooks(profile: str = "cpu", only: list[str] | None = None, out_dir: str | Path | None = None,
                  log_output: bool = False) -> dict[str, float]:
    """Execute every notebook (or those whose name starts with one of ``only``); return seconds each."""
    import papermill as pm

    out = Path(out_dir or REPO_ROOT / "results" / "notebooks" / profile)
    out.mkdir(parents=True, exist_ok=True)
    books = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
                   if not only or any(p.name.startswith(o) for o in only))
    timings = {}
    for nb in books:
        t0 = time.time()
        print(f"[{profile}] {nb.name} ...", flush=True)
        pm.execute_notebook(str(nb), str(out / nb.name), parameters={"profile": profile}, cwd=str(NOTEBOOKS),
                            kernel_name="python3", progress_bar=False, log_output=log_output)
        timings[nb.name] = round(time.time() - t0, 1)
        print(f"[{profile}] {nb.name} done in {timings[nb.name]} s", flush=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    return timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m she_lib.notebooks", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 05")
    ap.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    args = ap.parse_args(argv)
    timings = run_notebooks(args.profile, args.only, log_output=args.log_output)
    print(f"all notebooks done in {sum(timings.values()):.0f} s: {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
