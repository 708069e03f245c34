"""The inspector picture of docs/results.md: one rollout group of an RL run's rollouts.jsonl, exported as static HTML by
she_lib.inspector and rendered by headless chromium.

    .venv/bin/python scripts/inspector_screenshot.py --run runs/cpu-full/srpo --out results/inspector.png

The group shown is the first, in training order, with right and wrong rollouts and a critical step (a wrong
rollout's first wrong step): the case SRPO's step advantages are for.
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from she_lib.inspector import InspectorState  # noqa: E402


def informative(group: list[dict]) -> bool:
    right = {bool(r["correct"]) for r in group}
    return right == {True, False} and any("first_error" in r["critical"] for r in group)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="an RL run folder holding rollouts.jsonl")
    ap.add_argument("--out", default="results/inspector.png")
    ap.add_argument("--size", default="1300,1500")
    args = ap.parse_args()
    run = Path(args.run)
    state = InspectorState({run.name: run / "rollouts.jsonl"})
    keys = sorted({(r["step"], r["group"], r["query"]) for r in state.records()})
    for step, group, query in keys:
        state.select_query(query)
        state.select_group((step, group))
        if informative(state.group):
            break
    html = state.export_html(Path(args.out).with_suffix(".html"))
    print(f"{run.name}: step {state.group_key[0]}, group {state.group_key[1]}, query {state.query!r} -> {html}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium on PATH: open the HTML file instead")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={Path(args.out).resolve()}",
                    f"--window-size={args.size}", html.resolve().as_uri()], check=True, capture_output=True)
    print("written:", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
