"""Grade-probe read-out: the grade head of a trained LLM refit on every train pair.

The first-token read-out scores grade k by a logit z_k = w_k . h, with h the model's last hidden state (after the
final norm) at the answer position (after ``<grade>``) and w_k the LM-head row of grade k's first token. SFT sets
w_k through the cross-entropy of every token of the rationale, on the pairs its budget covers, with the data's
prior; the prior-corrected read-out (she_lib.prior_correction) refits one bias per grade. The probe refits the whole
head on the model's own states: a multinomial logistic regression on the standardised states s(h_i) of the train
pairs,

    P(k | h) = softmax_k(W s(h) + c),   min_{W,c}  sum_i v_{y_i} * -log P(y_i | h_i) + ||W||^2 / (2C),

with class weights v_k = n / (K n_k) (``class_weight="balanced"``: every grade counts as much as the others, the
macro-F1 view) and C chosen from ``c_grid`` by validation macro-F1 (a tie keeps the smaller C: the stronger
prior). Optionally (``tune_biases``) per-grade biases are then tuned on the same validation read-out exactly as
the prior-corrected read-out does. The model is frozen: the probe asks how much of the decision the model's
representation carries, which one epoch of LoRA on a small budget does not move into the grade token's logit.

States are read once per pair and cached in the run folder (``states_<split>_<order>_L<layer ids>/``, one ``.npz``
per chunk of ``chunk`` pairs, so an interrupted read resumes; a pair cached under any split is not read again); the fitted probe is saved as ``grade_probe.joblib``
beside the adapter and read back by :func:`load_probe` to score any ESCI folder without refitting.

Config fields (:class:`GradeProbeConfig`): the layers read (``depths``: 1.0 is the state the LM head reads), the
train pairs per query (None: all), the C grid, the class weighting, the bias tuning, the chunk size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .config import stage_budget
from .labels import get_scale
from .predictions import as_trained, per_query, prediction_cache
from .prior_correction import PriorCorrectionConfig, corrected, index_macro_f1, tune_biases
from .results import score
from .schema import render_prompt

PROBE_FILE = "grade_probe.joblib"


@dataclass(frozen=True)
class GradeProbeConfig:
    # the states read, as fractions of the model's depth: layer round(f * n_layers) of ``output_hidden_states`` (0:
    # the embeddings; 1.0: the last layer after the final norm, the state the LM head reads), concatenated
    depths: tuple[float, ...] = (1.0, 2 / 3, 1 / 3)
    train_pairs_per_query: int | None = None  # train pairs read per query (predictions.per_query); None = all
    validation_pairs_per_query: int | None = None  # validation pairs C (and the biases) are chosen on
    c_grid: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    class_weight: str | None = "balanced"  # None: the data's prior
    tune_biases: bool = True  # per-grade biases on the probe's log-probabilities, tuned on validation
    chunk: int = 256  # pairs per cached chunk of states (the resume granularity)
    max_iter: int = 3000

    @classmethod
    def for_profile(cls, profile, **overrides) -> "GradeProbeConfig":
        """The profile's probe budget (the ``probe`` entry of she_lib.config.TABLE), then ``overrides``."""
        return cls(**{**stage_budget(profile, "probe"), **overrides})


def layers(config: GradeProbeConfig, n_layers: int) -> tuple[int, ...]:
    """The ``output_hidden_states`` indices ``config.depths`` name in a model of ``n_layers`` layers."""
    return tuple(int(round(f * n_layers)) for f in config.depths)


def _states_dir(run: Path, split: str, order: str, layer_ids) -> Path:
    return Path(run) / f"states_{split}_{order}_L{'_'.join(str(k) for k in layer_ids)}"


def _n_layers(run: Path, profile) -> int:
    """Layers of the base model of ``run`` (from its adapter's base config, else the profile's model)."""
    from transformers import AutoConfig

    from .modeling import model_path

    if (run / "config.json").exists():
        return AutoConfig.from_pretrained(run).num_hidden_layers
    if profile.is_tiny:
        return profile.tiny_layers
    return AutoConfig.from_pretrained(model_path(profile)).num_hidden_layers


def cached_states(run: str | Path, profile, df: pd.DataFrame, split: str, config: GradeProbeConfig,
                  policy=None, progress: bool = True) -> np.ndarray:
    """[len(df), d] answer states (inference.answer_states) of ``run``'s model on ``df``'s pairs, in the prompt the
    run was trained on, read from the run's cache for ``split`` and computed chunk by chunk where missing. The
    model is loaded only when a pair is missing (or pass ``policy``); a folder whose ``run.json`` has kind ``base``
    stands for the profile's untrained model (the control: how much of the probe's skill SFT adds)."""
    from .inference import answer_states

    run = Path(run)
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    profile, df = as_trained(info, profile, df)
    layer_ids = layers(config, _n_layers(run, profile))
    folder = _states_dir(run, split, profile.order, layer_ids)
    have: dict[str, np.ndarray] = {}
    # a pair's state depends on the model, the prompt and the layers, not on the split it is read for: every
    # split's cache of this order and these layers serves (a pair of an extra folder's train split read earlier
    # as part of the whole folder is not read again)
    for f in sorted(Path(run).glob(f"{_states_dir(run, '*', profile.order, layer_ids).name}/chunk_*.npz")):
        z = np.load(f, allow_pickle=False)
        have.update(zip(z["example_id"].tolist(), z["states"]))
    todo = df[~df["example_id"].isin(have)]
    if len(todo):
        if policy is None:
            from .modeling import load_policy, load_run

            # a run of kind "base" is the untrained model read in the run's prompt: the probe's control
            policy = load_policy(profile) if info.get("kind") == "base" else load_run(run, profile)
        folder.mkdir(parents=True, exist_ok=True)
        scale, start = get_scale(profile.grade_scale), len(list(folder.glob("chunk_*.npz")))
        rows = todo.to_dict("records")
        for i in range(0, len(rows), config.chunk):
            part = rows[i:i + config.chunk]
            prompts = [render_prompt(policy.tokenizer, r, scale, profile.order) for r in part]
            x = answer_states(policy.model, policy.tokenizer, prompts, layer_ids,
                              batch_size=profile.eval_batch_size, progress=progress)
            ids = np.array([r["example_id"] for r in part])
            np.savez(folder / f"chunk_{start:05d}.npz", example_id=ids, states=x)
            start += 1
            have.update(zip(ids.tolist(), x))
    return np.stack([have[e] for e in df["example_id"]])


@dataclass
class GradeProbe:
    """A fitted probe: the scaler + logistic regression, the grade words its classes stand for, the biases."""
    model: object
    words: list[str]
    biases: np.ndarray
    c: float
    validation_macro_f1: float
    config: GradeProbeConfig

    def probabilities(self, states: np.ndarray) -> np.ndarray:
        """[n, K] P(k | h) in the order of ``words``."""
        p = self.model.predict_proba(states)
        return p[:, [list(self.model.classes_).index(k) for k in range(len(self.words))]]

    def predict(self, states: np.ndarray) -> np.ndarray:
        return np.array(self.words)[corrected(self.probabilities(states), self.biases)]

    def save(self, path: str | Path) -> Path:
        joblib.dump(self, path)
        return Path(path)


def load_probe(path: str | Path) -> GradeProbe:
    return joblib.load(path)


def fit_probe(x_train, y_train, x_val, y_val, words, config: GradeProbeConfig | None = None) -> GradeProbe:
    """The probe of the module docstring: one fit per C on train, C (then the biases) chosen on validation."""
    config, words = config or GradeProbeConfig(), list(words)
    y, yv = (np.array([words.index(v) for v in ys]) for ys in (y_train, y_val))
    missing = sorted(set(range(len(words))) - set(y.tolist()))
    if missing:
        raise ValueError(f"grade probe: no train pair of grade(s) {[words[k] for k in missing]}")
    best = None
    for c in sorted(config.c_grid):
        model = make_pipeline(StandardScaler(), LogisticRegression(
            C=c, class_weight=config.class_weight, max_iter=config.max_iter)).fit(x_train, y)
        probe = GradeProbe(model, words, np.zeros(len(words)), c, 0.0, config)
        f1 = index_macro_f1(yv, corrected(probe.probabilities(x_val), probe.biases), len(words))
        if best is None or f1 > best.validation_macro_f1 + 1e-12:
            probe.validation_macro_f1, best = f1, probe
    if config.tune_biases:
        best.biases, best.validation_macro_f1 = tune_biases(best.probabilities(x_val), y_val, words,
                                                            PriorCorrectionConfig())
    return best


def train_probe(run: str | Path, profile, train: pd.DataFrame, validation: pd.DataFrame,
                config: GradeProbeConfig | None = None, progress: bool = True) -> GradeProbe:
    """Read ``run``'s states on the train and validation pairs (cached), fit the probe, save it in the run."""
    config = config or GradeProbeConfig()
    words = get_scale(profile.grade_scale).words
    tr, va = per_query(train, config.train_pairs_per_query), per_query(validation, config.validation_pairs_per_query)
    x_tr = cached_states(run, profile, tr, "train", config, progress=progress)
    x_va = cached_states(run, profile, va, "validation", config, progress=progress)
    probe = fit_probe(x_tr, tr["label"], x_va, va["label"], words, config)
    probe.save(Path(run) / PROBE_FILE)
    return probe


def evaluate_probe(profile, run: str | Path, test: pd.DataFrame, extra=(), probe: GradeProbe | None = None,
                   config: GradeProbeConfig | None = None, progress: bool = True) -> dict:
    """Score ``run``'s probe (the saved one unless given) on ``test`` and on every ``(profile, frame)`` of
    ``extra``: {split: results.score entry, scoring "grade_probe"}; the predictions are cached as
    ``predictions_<split>_probe_<order>.jsonl`` (the states as above)."""
    run = Path(run)
    probe = probe or load_probe(run / PROBE_FILE)
    config = config or probe.config
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    out = {}
    for prof, df in ((profile, test), *extra):
        x = cached_states(run, prof, df, prof.eval_split, config, progress=progress)
        preds = pd.DataFrame({"example_id": df["example_id"].to_numpy(), "pred": probe.predict(x)})
        cache = prediction_cache(run, prof, "probe")
        if cache is not None:
            preds.to_json(cache, orient="records", lines=True)
        out[prof.eval_split] = score(df, preds, prof, split=prof.eval_split, model=str(run), scoring="grade_probe",
                                     run=info, probe_c=probe.c, probe_depths=list(config.depths),
                                     probe_biases=dict(zip(probe.words, np.round(probe.biases, 3).tolist())),
                                     probe_validation_macro_f1=round(probe.validation_macro_f1, 4))
    return out
