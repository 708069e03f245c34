"""A policy whose grade token reads the grade probe: an RL start that tells the pairs apart.

Why: every first-token read-out of an SFT or RL model here has Cohen's kappa ~ 0 and per-grade AUROCs ~ 0.5
(she_lib.rl_report.grade_skill), while a linear probe of the same model's states reaches kappa ~ 0.3 on
esci_us_wide (she_lib.grade_probe): the states carry the decision, the LM-head rows of the grades do not read it,
and RL from such a model can only move the grades' shares. This writes the SFT model with those rows set to the
probe's, as a full checkpoint an RL run starts from (``python -m she_lib.rl --sft <out>``; modeling.load_run).

The first-token read-out scores grade k by z_k = w_k . h (h: the last hidden state after the final norm at the
answer position; w_k: the LM-head row of grade k's first token). The probe, fitted on those states (grade_probe with
``depths=(1.0,)``), is log P(k | h) = a_k . h + b_k + const with a_k = W_k / sigma and
b_k = c_k - W_k . (mu / sigma) + t_k (W, c: its logistic regression on standardised states (h - mu) / sigma; t_k its
validation-tuned bias). An LM head has no bias, so b_k rides on a direction u along which the states are nearly
constant, u = argmin_u ||H u - 1||^2 + ridge ||u||^2 over the train states H, and

    w_k' = m + alpha (a_k + b_k u),    m = mean_j w_j (the K SFT rows)

so z_k' - z_j' = alpha ((a_k - a_j) . h + (b_k - b_j) u . h), the probe's log-odds at alpha = 1 up to how constant
u . h is (``u_h_std`` in the report). The shared m keeps the grades' logits against the rest of the vocabulary where
SFT put them, so the policy still writes a grade after ``<grade>``. SmolLM2 ties its LM head to the input
embeddings: they are untied first, so a grade word read inside the steps keeps its SFT embedding. The LoRA of RL
does not reach the LM head (``lora_target_modules``): RL moves the states these fixed rows read.

Where the rows are read (``ProbeHeadConfig.position``): "everywhere" writes them into the LM head, so they fire at
every position and the steps start naming grades (decoded step accuracy 0.500 -> 0.421 on cpu-full); "grade" leaves
the SFT model as it is and saves the rows as a grade head read only after ``<grade>`` (she_lib.grade_head), so the
rationale stays SFT's and only the grade is the probe's.

Config (:class:`ProbeHeadConfig`): ``alpha`` (the head's temperature, 1 = the probe's own log-odds), ``ridge``,
``position``, the probe's fields (``probe``: grade_probe.GradeProbeConfig; its depths are forced to (1.0,))."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .config import get_profile
from .data import load_splits
from .grade_head import GradeHead
from .grade_probe import GradeProbe, GradeProbeConfig, cached_states, train_probe
from .inference import grade_token_ids
from .labels import get_scale
from .modeling import load_run
from .predictions import per_query


@dataclass(frozen=True)
class ProbeHeadConfig:
    alpha: float = 1.0  # scale of the probe's log-odds in the head (1: the probe's own)
    ridge: float = 1e-3  # ridge of the constant direction u (relative to the mean squared state norm)
    position: str = "everywhere"  # where the rows are read: "everywhere" (the LM head) or "grade" (after <grade>)
    probe: GradeProbeConfig = field(default_factory=GradeProbeConfig)


def constant_direction(states: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, float]:
    """(u, std of u . h): u = argmin ||H u - 1||^2 + lam ||u||^2 with lam = ridge * mean ||h||^2, the direction that
    carries a bias through states H [n, d] (u . h ~ 1 for every h)."""
    h = np.asarray(states, dtype=np.float64)
    lam = ridge * float((h ** 2).sum(1).mean())
    u = np.linalg.solve(h.T @ h + lam * np.eye(h.shape[1]), h.T @ np.ones(len(h)))
    return u, float((h @ u).std())


def probe_log_odds(probe: GradeProbe) -> tuple[np.ndarray, np.ndarray]:
    """(A [K, d], b [K]) with log P(k | h) = A_k . h + b_k + const, in the order of ``probe.words``, from its
    StandardScaler + LogisticRegression pipeline and its tuned biases."""
    scaler, lr = probe.model.steps[0][1], probe.model.steps[-1][1]
    order = [list(lr.classes_).index(k) for k in range(len(probe.words))]
    w, c = lr.coef_[order], lr.intercept_[order]
    if w.shape[0] == 1:  # a binary fit has one row; the grade scales here have >= 3 grades
        raise ValueError("probe_log_odds needs a multinomial probe")
    a = w / scaler.scale_
    return a, c - a @ scaler.mean_ + np.asarray(probe.biases, float)


def head_rows(old_rows: np.ndarray, probe: GradeProbe, states: np.ndarray, config: ProbeHeadConfig
              ) -> tuple[np.ndarray, dict]:
    """The K new LM-head rows w_k' = m + alpha (a_k + b_k u) of the module doc, and a report."""
    a, b = probe_log_odds(probe)
    u, spread = constant_direction(states, config.ridge)
    rows = old_rows.mean(0, keepdims=True) + config.alpha * (a + b[:, None] * u[None, :])
    return rows, {"alpha": config.alpha, "u_h_std": spread, "probe_c": probe.c,
                  "probe_validation_macro_f1": round(probe.validation_macro_f1, 4),
                  "biases": dict(zip(probe.words, np.round(b, 3).tolist()))}


def set_grade_rows(model, tokenizer, words, rows: np.ndarray) -> None:
    """Untie the LM head from the input embeddings (a copy of the tied matrix) and write ``rows`` into the rows of
    ``words``' first tokens (inference.grade_token_ids)."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight or getattr(model.config, "tie_word_embeddings", False):
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False
    with torch.no_grad():
        head.weight[grade_token_ids(tokenizer, words)] = torch.as_tensor(rows, dtype=head.weight.dtype)


def write_probe_head(run: str | Path, profile, train, validation, out: str | Path,
                     config: ProbeHeadConfig | None = None, progress: bool = True) -> Path:
    """Fit the last-layer probe of SFT run ``run`` (states cached in the run), write the SFT model with the probe's
    grade rows (module doc) to ``out`` as a full checkpoint with the tokenizer and a ``run.json`` (kind ``sft``, the
    SFT run's order, ``probe_head``: the report of :func:`head_rows` and the position). Returns ``out``."""
    config = config or ProbeHeadConfig()
    if config.position not in ("everywhere", "grade"):
        raise ValueError(f"ProbeHeadConfig.position must be 'everywhere' or 'grade', got {config.position!r}")
    pcfg = replace(config.probe, depths=(1.0,))
    run, out = Path(run), Path(out)
    probe = train_probe(run, profile, train, validation, pcfg, progress=progress)
    states = cached_states(run, profile, per_query(train, pcfg.train_pairs_per_query), "train", pcfg, progress=False)
    policy = load_run(run, profile.replace(dtype="float32"))
    words = get_scale(profile.grade_scale).words
    ids = grade_token_ids(policy.tokenizer, words)
    old = policy.model.get_output_embeddings().weight[ids].detach().float().numpy()
    rows, report = head_rows(old, probe, states, config)
    out.mkdir(parents=True, exist_ok=True)
    if config.position == "grade":
        GradeHead(policy.tokenizer("<grade>", add_special_tokens=False).input_ids, ids,
                  torch.as_tensor(rows, dtype=torch.float32)).save(out)
    else:
        set_grade_rows(policy.model, policy.tokenizer, words, rows)
    policy.model.save_pretrained(out)
    policy.tokenizer.save_pretrained(out)
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    (out / "run.json").write_text(json.dumps({
        "kind": "sft", "finished": True, "order": info.get("order", profile.order), "profile": profile.name,
        "from": str(run), "probe_head": {**report, "position": config.position}}, indent=2))
    return out


def main(argv=None) -> int:
    """``python -m she_lib.probe_head --run runs/cpu-full/sft --profile cpu-full --out runs/cpu-full/sft_head
    [--alpha 1] [--position grade] [--pairs-per-query 16]``: fit the probe on the run's states and write the policy."""
    ap = argparse.ArgumentParser(prog="python -m she_lib.probe_head", description=main.__doc__)
    ap.add_argument("--run", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--alpha", type=float, default=ProbeHeadConfig.alpha)
    ap.add_argument("--position", choices=("everywhere", "grade"), default=ProbeHeadConfig.position,
                    help="where the grade rows are read (module doc)")
    ap.add_argument("--pairs-per-query", type=int, help="train and validation pairs per query read (default: the "
                                                         "profile's probe budget)")
    args = ap.parse_args(argv)
    profile = get_profile(args.profile)
    probe = GradeProbeConfig.for_profile(profile)
    if args.pairs_per_query:
        probe = replace(probe, train_pairs_per_query=args.pairs_per_query,
                        validation_pairs_per_query=args.pairs_per_query)
    splits = load_splits(profile)
    out = write_probe_head(args.run, profile, splits["train"], splits["validation"], args.out,
                           ProbeHeadConfig(alpha=args.alpha, position=args.position, probe=probe))
    print(json.dumps(json.loads((out / "run.json").read_text())["probe_head"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
