"""The headline table: every method's macro-F1 on the esci_us test split and on the esci_us_wide test split, and
Cohen's kappa of each (she_lib.metrics.chance_agreement: ~0 for a read-out whose grade does not depend on the pair,
whatever its macro-F1), from the committed metrics files (``python -m she_lib.headline`` writes
``results/headline.md`` and refreshes the README's copy).

Which rows (the rule, applied to ``results/metrics.json`` and every ``results/<folder>/metrics.json``):

* rows of a demo profile (``smoke``, ``cpu``: a sample of the test split at a budget meant to exercise the code,
  e.g. ``results/cpu/``) are left out, and so are rows of other splits than ``test``;
* per folder, each method's headline read-out: the ``classifier`` row of a non-LLM baseline, the ``first_token``
  row of an LLM (``<method>_first_token``: all test pairs, one forward pass, the same read-out for every method),
  and where it exists the prior-corrected read-out of those probabilities (``<method>_prior``, biases tuned on
  validation: she_lib.prior_correction), the grade-probe read-out of the model's states (``<method>_probe``:
  she_lib.grade_probe) and the grade-tuned read-out (``<method>_tune``: she_lib.grade_tune) as rows of their own.
  Decoded and CumPT read-outs and seeds after the first (``_s1``...) stay in the folder's ``summary.md``; rows
  without a confidence interval (the GenRM's) are not classifiers;
* the esci_us_wide cell is the same method's row in ``<folder>/esci_us_wide_test/metrics.json`` (the wide folder's
  test split, data.folder_splits), when there is one; a scoring of the whole wide folder is not shown.

A method appears once per folder that has it, so each folder's rows can be compared with that folder's own
lexical baseline. Rows are ordered by method (lexical, zero-shot, SFT and its variants, DPO, GRPO, SRPO, AGRL, then
any other), then folders with an esci_us_wide cell first, then by folder. The run that made
each cell (``made_by``: she_lib.provenance) is listed under the table.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from .metrics import chance_agreement
from .provenance import run_labels

DEMO_PROFILES = ("smoke", "cpu")
HEADLINE_SCORING = ("classifier", "first_token", "prior_corrected", "grade_probe", "grade_tune")
WIDE = "esci_us_wide_test"
ORDER = ("lexical", "zero_shot", "sft", "dpo", "grpo", "srpo", "agrl")
NAMES = {"lexical": "lexical baseline", "zero_shot": "zero-shot", "sft": "SFT", "dpo": "DPO", "grpo": "GRPO",
         "srpo": "SRPO", "agrl": "AGRL"}
BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _method(key: str, row: dict) -> str | None:
    """The method a headline row stands for, or None when the row is not a headline read-out."""
    if row.get("scoring") not in HEADLINE_SCORING or "macro_f1_ci" not in row:
        return None
    base = key[: -len("_first_token")] if key.endswith("_first_token") else key
    return None if re.search(r"_s\d+(_prior|_probe|_tune)?$", base) else base


def _family(method: str) -> str | None:
    """The entry of ORDER a method belongs to (``sft_plain`` -> ``sft``), None for an unknown one."""
    return next((m for m in sorted(ORDER, key=len, reverse=True) if method == m or method.startswith(m + "_")), None)


READOUTS = {"_prior": ", prior-corrected", "_probe": ", grade probe", "_tune": ", grade-tuned"}  # row-name tail -> label
LABELS = {"lexical_esci_us": "lexical baseline, esci_us train only"}  # rows whose name does not spell their label


def _label(method: str) -> str:
    """``sft_evidence_prior`` -> ``SFT evidence, prior-corrected``; ``sft_probe`` -> ``SFT, grade probe``."""
    if method in LABELS:
        return LABELS[method]
    tail = next((t for t in READOUTS if method.endswith(t)), "")
    method = method[: len(method) - len(tail)]
    head = _family(method)
    name = method if head is None else " ".join([NAMES[head], *method[len(head) + 1:].split("_")]).strip()
    return name + READOUTS.get(tail, "")


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    lo, hi = row["macro_f1_ci"]
    return f"{row['macro_f1']:.3f} [{lo:.3f}, {hi:.3f}]"


def _kappa(row: dict | None) -> str:
    if row is None or "confusion_matrix" not in row:
        return "—"
    return f"{chance_agreement(row['confusion_matrix'])['kappa']:.3f}"


def _machine(row: dict) -> str:
    """CPU or GPU of the run that made the row, without the torch version."""
    full = (row.get("made_by") or {}).get("machine") or row.get("machine") or "?"
    parts = [p for p in full.replace("(R)", "").replace(" Processor", "").split(", ") if not p.startswith("torch")]
    return ", ".join(parts)


def headline_rows(results_dir: str | Path) -> list[dict]:
    """The rows of the table (see the module docstring for the rule), ordered by method then folder."""
    results_dir = Path(results_dir)
    rows = []
    for path in [results_dir / "metrics.json", *sorted(results_dir.glob("*/metrics.json"))]:
        test, wide = _load(path), _load(path.parent / WIDE / "metrics.json")
        folder = path.parent.relative_to(results_dir.parent).as_posix() + "/"
        for key, row in test.items():
            method = _method(key, row)
            if method is None or row.get("split") != "test" or row.get("profile") in DEMO_PROFILES:
                continue
            rows.append({"method": method, "folder": folder, "profile": row.get("profile", "?"),
                         "test": row, "wide": wide.get(key) if "macro_f1_ci" in wide.get(key, {}) else None})
    rank = {m: i for i, m in enumerate(ORDER)}
    rows.sort(key=lambda r: (rank.get(_family(r["method"]), len(ORDER)), r["method"], r["wide"] is None, r["folder"]))
    return rows


def headline_markdown(results_dir: str | Path) -> str:
    """The table, then the runs that made its cells (command, commit, start, machine)."""
    rows = headline_rows(results_dir)
    cells = {f"{i}/{s}": r[s] for i, r in enumerate(rows) for s in ("test", "wide") if r[s] is not None}
    labels, runs = run_labels(cells)
    lines = ["| method | esci_us test: macro-F1 [95% CI] | esci_us_wide test: macro-F1 [95% CI] | kappa (esci_us / wide) | "
             "results (profile) | run | machine |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        run = ", ".join(dict.fromkeys(labels[f"{i}/{s}"] for s in ("test", "wide") if r[s] is not None))
        lines.append(f"| {_label(r['method'])} | {_cell(r['test'])} | {_cell(r['wide'])} | "
                     f"{_kappa(r['test'])} / {_kappa(r['wide'])} | `{r['folder']}` "
                     f"({r['profile']}) | {run} | {_machine(r['test'])} |")
    legend = [f"- {r['label']}: `{r['command']}` at commit {r['commit']}, {r['started']}, on {r['machine']}"
              for r in runs]
    if "unrecorded" in labels.values():
        legend.append("- unrecorded: rows written before rows carried the run that made them")
    return "\n".join(lines) + "\n\nRuns that made these cells:\n" + "\n".join(legend) + "\n"


def refresh(text: str, table: str) -> str:
    """``text`` with everything between the BEGIN and END markers replaced by ``table``."""
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + table + text[stop:]


def write_headline(results_dir: str | Path = "results", readme: str | Path | None = "README.md") -> str:
    """Write ``<results_dir>/headline.md``; refresh the table between the markers of ``readme`` if it has them."""
    table = headline_markdown(results_dir)
    (Path(results_dir) / "headline.md").write_text(
        "<!-- made by `python -m she_lib.headline`; the rule for which rows: she_lib/headline.py -->\n\n" + table)
    if readme is not None and Path(readme).exists() and BEGIN in (text := Path(readme).read_text()):
        Path(readme).write_text(refresh(text, table))
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results folder (default: results)")
    ap.add_argument("--readme", default="README.md", help="file whose marked table is refreshed ('' for none)")
    args = ap.parse_args(argv)
    print(write_headline(args.results, args.readme or None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
