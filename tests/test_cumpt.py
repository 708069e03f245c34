"""CumPT: the tiering rule, the beta sweep and its tuning on hand-made probability vectors; the report on caches."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from she_lib.cumpt import (argmax_point, cumpt_indices, cumpt_predict, cumulative, evaluate_cumpt, sweep,
                           tune_beta)
from she_lib.labels import ESCI

W = list(ESCI.words)  # Exact, Substitute, Complement, Irrelevant
# rows (not all normalised), cumulative from the top grade down:
P = np.array([[0.5, 0.125, 0.375, 0.0],        # C = .5    .625  1      1
              [0.125, 0.125, 0.25, 0.5],       # C = .125  .25   .5     1
              [0.75, 0.125, 0.0625, 0.0625],   # C = .75   .875  .9375  1
              [0.0, 0.0, 0.0, 2.0]])           # C = 0     0     0      1 (renormalised)
Y = ["Substitute", "Irrelevant", "Exact", "Irrelevant"]


def test_cumulative_renormalises_and_rejects_bad_rows():
    assert cumulative(P).tolist() == [[0.5, 0.625, 1, 1], [0.125, 0.25, 0.5, 1], [0.75, 0.875, 0.9375, 1],
                                      [0, 0, 0, 1]]
    for bad in ([[0.5, -0.1]], [[0.0, 0.0]], [[np.nan, 1.0]], [0.5, 0.5], np.zeros((0, 4))):
        with pytest.raises(ValueError):
            cumulative(bad)


@pytest.mark.parametrize("beta, expected", [
    (0.5, ["Exact", "Complement", "Exact", "Irrelevant"]),
    (0.6, ["Substitute", "Irrelevant", "Exact", "Irrelevant"]),
    (0.9, ["Complement", "Irrelevant", "Complement", "Irrelevant"]),
    (1.0, ["Complement", "Irrelevant", "Irrelevant", "Irrelevant"]),  # row 3 never reaches 1 before the last grade
    (0.01, ["Exact", "Exact", "Exact", "Irrelevant"]),
])
def test_the_first_grade_whose_cumulative_probability_reaches_beta(beta, expected):
    assert cumpt_predict(P, beta, W) == expected


def test_cumpt_is_not_the_argmax():
    assert [W[i] for i in P.argmax(1)] == ["Exact", "Irrelevant", "Exact", "Irrelevant"]
    assert cumpt_predict(P, 0.6, W)[0] == "Substitute"  # argmax says Exact (0.5), CumPT's cumulative 0.625 >= 0.6


def test_bad_beta_and_shape_raise():
    for beta in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="beta"):
            cumpt_indices(P, beta)
    with pytest.raises(ValueError, match="3 grades"):
        cumpt_predict(P, 0.5, W[:3])


def test_sweep_hand_computed():
    t = sweep(P, Y, W, betas=[0.9, 0.5, 0.6]).set_index("beta")
    assert list(t.index) == [0.5, 0.6, 0.9]  # sorted
    # beta .5: E C E I vs S I E I -> right on rows 2, 3; F1 Exact 2/3, Irrelevant 2/3, others 0
    assert t.loc[0.5, "accuracy"] == 0.5 and t.loc[0.5, "macro_f1"] == pytest.approx(1 / 3)
    # "grade >= Exact": predicted rows 0, 2, true row 2; ">= Substitute": predicted 0, 2, true 0, 2;
    # ">= Complement": predicted 0, 1, 2, true 0, 2
    assert t.loc[0.5, ["precision@Exact", "recall@Exact"]].tolist() == [0.5, 1.0]
    assert t.loc[0.5, ["precision@Substitute", "recall@Substitute"]].tolist() == [1.0, 1.0]
    assert t.loc[0.5, "precision@Complement"] == pytest.approx(2 / 3) and t.loc[0.5, "recall@Complement"] == 1.0
    assert "precision@Irrelevant" not in t.columns  # every pair is ">= the lowest grade"
    # beta .6: all four right; Complement has no example -> F1 0 -> macro 3/4
    assert t.loc[0.6, "accuracy"] == 1.0 and t.loc[0.6, "macro_f1"] == pytest.approx(0.75)
    # beta .9: C I C I -> nothing is called Exact: precision undefined (NaN), recall 0
    assert np.isnan(t.loc[0.9, "precision@Exact"]) and t.loc[0.9, "recall@Exact"] == 0.0
    assert t.loc[0.9, "macro_f1"] == pytest.approx(0.25)


def test_tune_beta_takes_the_smallest_best():
    beta, table = tune_beta(P, Y, W, betas=[0.9, 0.6, 0.55, 0.5])
    assert beta == 0.55  # 0.55 and 0.6 give the same predictions (macro-F1 3/4)
    assert table["macro_f1"].max() == pytest.approx(0.75)


def test_sweep_agrees_with_sklearn_on_random_vectors():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), 200)
    y = rng.choice(W, 200).tolist()
    t = sweep(p, y, W, betas=[0.2, 0.45, 0.8]).set_index("beta")
    for beta in (0.2, 0.45, 0.8):
        pred = cumpt_predict(p, beta, W)
        assert t.loc[beta, "macro_f1"] == pytest.approx(f1_score(y, pred, labels=W, average="macro", zero_division=0))
        for k, w in enumerate(W[:-1]):
            yt, yp = [W.index(v) <= k for v in y], [W.index(v) <= k for v in pred]
            assert t.loc[beta, f"recall@{w}"] == pytest.approx(recall_score(yt, yp))
            assert t.loc[beta, f"precision@{w}"] == pytest.approx(precision_score(yt, yp, zero_division=np.nan),
                                                                  nan_ok=True)
    a = argmax_point(p, y, W)
    assert a["macro_f1"] == pytest.approx(f1_score(y, [W[i] for i in p.argmax(1)], labels=W, average="macro"))


def _write_cache(path, ids, probs):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"example_id": e, "pred": W[int(np.argmax(p))], **{f"p_{w}": float(x) for w, x in zip(W, p)}}
            for e, p in zip(ids, probs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_evaluate_cumpt_tunes_on_validation_and_applies_to_test(smoke, monkeypatch):
    import she_lib.modeling as modeling

    monkeypatch.setattr(modeling, "load_policy", lambda *a, **k: pytest.fail("validation read-outs are cached"))
    folder = Path(smoke.runs_dir) / "zero_shot"
    val = pd.DataFrame({"example_id": ["v0", "v1", "v2", "v3"], "query": ["a", "a", "b", "b"], "label": Y})
    test = pd.DataFrame({"example_id": ["t0", "t1"], "query": ["c", "d"], "label": ["Substitute", "Exact"]})
    _write_cache(folder / "predictions_validation_first_token_grade_first.jsonl", val["example_id"], P)
    _write_cache(folder / "predictions_test_first_token_grade_first.jsonl", ["t1", "t0"], P[[2, 0]])
    out = evaluate_cumpt(smoke, folder, test, val, betas=[0.5, 0.55, 0.6, 0.9], seconds=3.0)
    assert out["beta"] == 0.55
    m = out["metrics"]  # t0 has row 0 (-> Substitute at 0.55), t1 row 2 (-> Exact)
    assert m["accuracy"] == 1.0 and m["scoring"] == "cumpt" and m["beta"] == 0.55 and m["seconds"] == 3.0
    saved = pd.read_json(folder / "predictions_test_cumpt_grade_first.jsonl", lines=True)
    assert saved["pred"].tolist() == ["Substitute", "Exact"] and (saved["beta"] == 0.55).all()


def test_report_regenerates_tables_and_figures(smoke, monkeypatch, capsys):
    """``python -m she_lib.evaluate --report``'s function on caches written here (no model runs)."""
    from she_lib.data import load_splits
    from she_lib.evaluate import eval_frame, report
    from she_lib.results import save_metrics, score

    splits = load_splits(smoke)
    test, val = eval_frame(smoke, splits), splits["validation"]
    rng = np.random.default_rng(1)
    runs = Path(smoke.runs_dir)
    _write_cache(runs / "zero_shot" / "predictions_test_first_token_grade_first.jsonl", test["example_id"],
                 rng.dirichlet(np.ones(4), len(test)))
    _write_cache(runs / "zero_shot" / "predictions_validation_first_token_grade_first.jsonl", val["example_id"],
                 rng.dirichlet(np.ones(4), len(val)))
    lex = pd.DataFrame({"example_id": test["example_id"], "pred": test["label"]})  # a perfect "lexical"
    (runs / "lexical").mkdir(parents=True)
    lex.to_json(runs / "lexical" / "predictions_test.jsonl", orient="records", lines=True)
    save_metrics(smoke.results_dir, "lexical", score(test, lex, smoke, seconds=2.0))
    (runs / "sft").mkdir(parents=True)  # a run whose first-token read-out is still running: 3 pairs cached
    (runs / "sft" / "run.json").write_text(json.dumps({"kind": "sft", "order": "grade_first"}))
    (runs / "sft" / "adapter_config.json").write_text("{}")
    _write_cache(runs / "sft" / "predictions_test_first_token_grade_first.jsonl", test["example_id"][:3],
                 rng.dirichlet(np.ones(4), 3))
    out = report(smoke)
    assert "CumPT: skipping sft_first_token" in capsys.readouterr().out
    metrics = json.loads((Path(smoke.results_dir) / "metrics.json").read_text())
    assert set(metrics) == {"lexical", "zero_shot_cumpt", "zero_shot_prior"}
    assert list(out["significance"][["A", "B"]].itertuples(index=False, name=None)) == [
        ("zero_shot_first_token", "lexical"), ("zero_shot_cumpt", "lexical"), ("zero_shot_prior", "lexical"),
        ("zero_shot_cumpt", "zero_shot_first_token"), ("zero_shot_prior", "zero_shot_first_token")]
    assert (out["significance"].loc[:2, "accuracy A-B"] < 0).all()  # nothing beats the perfect predictions
    prior = out["prior"]["zero_shot_prior"]  # tuned on the 8 validation pairs a query CumPT reads, Exact's bias fixed
    assert prior["biases"]["Exact"] == 0 and metrics["zero_shot_prior"]["scoring"] == "prior_corrected"
    summary = (Path(smoke.results_dir) / "summary.md").read_text()
    assert "zero_shot_cumpt" in summary and "ms / pair" in summary
    assert "zero_shot_cumpt" in (Path(smoke.results_dir) / "significance.md").read_text()
    for fig in ("05_cumpt.png", "05_confusion.png"):
        assert (Path(smoke.results_dir) / "figures" / fig).stat().st_size > 1000
    from she_lib.config import PROFILES
    from she_lib.evaluate import main

    (Path(smoke.results_dir) / "summary.md").unlink()
    monkeypatch.setattr("she_lib.config.PROFILES", {**PROFILES, "smoke": smoke})
    assert main(["--report", "--profile", "smoke"]) == 0  # the command line does the same
    assert "zero_shot_cumpt" in capsys.readouterr().out and (Path(smoke.results_dir) / "summary.md").exists()
    with pytest.raises(SystemExit):
        main(["--report", "--data", "data_samples/esci_us"])
