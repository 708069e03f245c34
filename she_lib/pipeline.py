"""The whole pipeline in one process, stage by stage, under a wall-clock budget: ``python -m she_lib.pipeline``.

What the notebooks do, without a Jupyter kernel (an offline GPU machine has none), in one Python process so that
torch, TRL and Unsloth are imported once. Stages, in order of value (a stage is skipped once the budget is spent,
and one that fails is recorded and the run goes on with the stages that do not need it):

1. ``data``: the profile's processed splits; ``lexical``: the lexical baseline.
2. ``sft``: CoT SFT (she_lib.sft; with Unsloth where available, retried with transformers + peft if Unsloth fails),
   then its read-outs; ``zero_shot``: the untrained model.
3. ``grpo``, ``srpo``, ``agrl``: RL from the SFT run, one run per seed of ``profile.rl_seeds`` (she_lib.rl).
4. ``dpo``: DPO on pass@N pairs; ``genrm``: the generative step reward model with its held-out report.
5. ``report``: CumPT, summary, significance (she_lib.evaluate.report) and the RL table (she_lib.rl_report).
6. ``speed``: SFT tokens/s of this process's backend (Unsloth or transformers + peft) on the SFT config for
   ``SPEED_STEPS`` steps; ``results_dir/sft_speed.json`` gathers one row per backend.

``data`` and ``report`` run whatever the budget (they only read and write files).

Every trained run (and the baselines) is scored on the profile's test split (``results_dir/metrics.json``) and on
the test split of each folder of ``profile.extra_eval_dirs`` (``results_dir/<folder name>_test/metrics.json``; a
query split of the folder, data.folder_splits, whose train split joins the training data only where the profile
lists the folder in ``extra_train_dirs``; decoded read-outs there take one pair per query, by seeded hash). ``results_dir/pipeline.json`` records each stage's status and seconds, the
machine and the command.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from .config import Profile, get_profile
from .data import load_splits
from .evaluate import eval_frame, evaluate_lexical, evaluate_run, evaluate_zero_shot, external_set, report_run
from .evaluate import report as evaluation_report
from .labels import get_scale
from .provenance import current_run, in_job, machine, start_run
from .results import save_metrics, write_summary
from .rl_report import finished_rl_runs, run_name, write_report

STAGES = ("data", "lexical", "sft", "zero_shot", "grpo", "srpo", "agrl", "dpo", "genrm", "report", "speed")
SPEED_STEPS = 40  # optimizer steps of the speed stage


class Pipeline:
    """Runs :data:`STAGES` (or a subset) for ``profile``; ``budget_s`` bounds the wall time (None = no bound)."""

    def __init__(self, profile: Profile, budget_s: float | None = None, stages=STAGES):
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
        self.profile, self.budget_s, self.stages = profile, budget_s, [s for s in STAGES if s in stages]
        self.t0, self.log, self.runs = time.time(), {}, {}
        self.splits = self.sft_run = None
        self._extra: dict[str, tuple[Profile, object]] = {}
        self._prior: tuple[dict, float] | None = None

    # ------------------------------------------------------------------------------- bookkeeping
    def elapsed(self) -> float:
        return time.time() - self.t0

    def _stage(self, name: str, fn) -> None:
        if self.budget_s is not None and self.elapsed() >= self.budget_s and name not in ("data", "report"):
            self.log[name] = {"status": "skipped", "why": f"budget of {self.budget_s:.0f} s spent"}
        else:
            t = time.time()
            print(f"[pipeline] {name} at {self.elapsed():.0f} s", flush=True)
            try:
                fn()
                self.log[name] = {"status": "done", "seconds": round(time.time() - t, 1)}
            except Exception as e:  # a failed stage is recorded; the stages that do not need it still run
                traceback.print_exc()
                self.log[name] = {"status": "failed", "seconds": round(time.time() - t, 1),
                                  "error": f"{type(e).__name__}: {e}"[:2000]}
        self._write()

    def _write(self) -> None:
        """``pipeline.json``; stages an earlier process of the same job (``$SHE_RUN``) recorded are kept."""
        path, run = Path(self.profile.results_dir) / "pipeline.json", current_run()
        path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(path.read_text()) if path.exists() else {}
        same_job = old.get("made_by", {}).get("id") == run["id"]
        if self._prior is None:  # what earlier processes of the job recorded, read once
            self._prior = (old.get("stages", {}), old.get("elapsed_s", 0)) if same_job else ({}, 0)
        stages = {**self._prior[0], **self.log}
        elapsed = self._prior[1] + self.elapsed()
        path.write_text(json.dumps({"profile": self.profile.name, "made_by": run, "budget_s": self.budget_s,
                                    "elapsed_s": round(elapsed, 1), "stages": stages}, indent=2))

    # ------------------------------------------------------------------------------- evaluation
    def extra_sets(self) -> dict[str, tuple[Profile, object]]:
        """Folder name -> (profile scoring that folder's test split, its curated frame): evaluate.external_set, the
        frame cut at ``eval_limit``; decoded read-outs there take one pair per query (270 on esci_us_wide: every
        test query, under half the cost)."""
        out = {}
        for folder in self.profile.extra_eval_dirs:
            prof, df = external_set(self.profile, folder, "test")
            out[Path(folder).name] = (prof.replace(eval_generate_per_query=1),
                                      df.iloc[: self.profile.eval_limit] if self.profile.eval_limit else df)
        return out

    def score(self, run: Path, modes=None, test: bool = True) -> None:
        """A saved run on the test split (unless ``test`` is False) and on every extra evaluation folder, saved with
        summaries."""
        modes = modes or self.profile.eval_trained_modes
        if test:
            report_run(run, self.profile, modes, save=True)
        for prof, df in self._extra.values():
            for method, m in evaluate_run(run, prof, df, modes).items():
                save_metrics(prof.results_dir, method, m)
            write_summary(prof.results_dir, get_scale(prof.grade_scale).words)

    # ------------------------------------------------------------------------------- stages
    def data(self):
        self.splits, self._extra = load_splits(self.profile), self.extra_sets()
        sft = Path(self.profile.runs_dir) / "sft"
        if self.sft_run is None and (sft / "run.json").exists():  # trained by an earlier process of the job
            self.sft_run = sft

    def lexical(self):
        """Fit and score the lexical baseline once; the extra folders are scored with the saved model."""
        evaluate_lexical(self.profile, self.splits)
        self.score(Path(self.profile.runs_dir) / "lexical", test=False)

    def sft(self):
        from .sft import CoTSFTConfig, train_sft

        config = CoTSFTConfig.for_profile(self.profile)
        try:
            self.sft_run = train_sft(self.profile, config, self.splits)
        except Exception:
            if not self.profile.use_unsloth:
                raise
            traceback.print_exc()
            print("[pipeline] SFT with Unsloth failed; again with transformers + peft", flush=True)
            self.log["sft_unsloth"] = {"status": "failed", "error": traceback.format_exc(limit=3)[-2000:]}
            self.sft_run = train_sft(self.profile.replace(use_unsloth=False), config, self.splits, resume=False)
        self.score(self.sft_run)

    def zero_shot(self):
        evaluate_zero_shot(self.profile, eval_frame(self.profile, self.splits), progress=False)
        for prof, df in self._extra.values():
            evaluate_zero_shot(prof, df, ("first_token",), progress=False)
            write_summary(prof.results_dir, get_scale(prof.grade_scale).words)

    def rl(self, method: str):
        from .rl import curriculum_for, rl_config, train_rl

        if self.sft_run is None:
            raise RuntimeError("no SFT run to start from")
        for seed in self.profile.rl_seeds:
            name = run_name(method, seed)
            run = train_rl(self.profile, method, self.sft_run, rl_config(self.profile, method, seed=seed,
                                                                         data_seed=seed),
                           curriculum_for(self.profile), self.splits, name=name)
            self.runs[name] = run
            self.score(run)

    def dpo(self):
        from .dpo import train_dpo

        if self.sft_run is None:
            raise RuntimeError("no SFT run to start from")
        self.runs["dpo"] = train_dpo(self.profile, self.sft_run, splits=self.splits, progress=False)
        self.score(self.runs["dpo"])

    def genrm(self):
        from .genrm import GenRMConfig, run_genrm

        run_genrm(self.profile, GenRMConfig.for_profile(self.profile), self.splits)

    def report(self):
        evaluation_report(self.profile, extra=tuple(self._extra.values()))
        if finished_rl_runs(self.profile.runs_dir):
            write_report(self.profile)

    def speed(self):
        """One row of ``sft_speed.json``: this process's SFT backend on the SFT config for SPEED_STEPS steps, no
        validation. scripts/gpu_run.sh runs it in its Unsloth process and in its plain one (Unsloth patches
        transformers when imported, so the plain row needs a process without it)."""
        from .modeling import unsloth_available
        from .sft import CoTSFTConfig, train_sft

        backend = "unsloth" if unsloth_available(self.profile) else "transformers"
        config = CoTSFTConfig.for_profile(self.profile, max_steps=SPEED_STEPS, eval_limit=None, save_steps=10 ** 6)
        info = json.loads((train_sft(self.profile, config, self.splits, name=f"sft_speed_{backend}") /
                           "run.json").read_text())
        path = Path(self.profile.results_dir) / "sft_speed.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        rows = {**old.get("rows", {}), backend: {k: info.get(k) for k in ("global_step", "seconds",
                                                                           "tokens_per_second", "bf16")}}
        path.write_text(json.dumps({"machine": machine(), "steps": SPEED_STEPS, "rows": rows,
                                    "batch": config.per_device_batch_size,
                                    "command": "python -m she_lib.pipeline --stages data speed (with and without "
                                               "SHE_NO_UNSLOTH=1)"}, indent=2))

    def run(self) -> dict:
        if "data" not in self.stages:
            self.data()
        for name in self.stages:
            fn = {"grpo": lambda: self.rl("grpo"), "srpo": lambda: self.rl("srpo"),
                  "agrl": lambda: self.rl("agrl")}.get(name) or getattr(self, name)
            self._stage(name, fn)
        return self.log


def main(argv=None) -> int:
    """``python -m she_lib.pipeline --profile gpu-offline [--budget 480] [--stages sft grpo ...]``"""
    ap = argparse.ArgumentParser(prog="python -m she_lib.pipeline", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="gpu-offline")
    ap.add_argument("--budget", type=float, default=None, help="wall seconds; later stages are skipped past it")
    ap.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    a = ap.parse_args(argv)
    if not in_job():  # scripts/gpu_run.sh gives its two processes one identity
        start_run("python -m she_lib.pipeline " + " ".join(argv if argv is not None else sys.argv[1:]))
    log = Pipeline(get_profile(a.profile), a.budget, a.stages).run()
    print(json.dumps(log, indent=1))
    return 0 if all(v["status"] != "failed" for v in log.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
