"""Grade scales and metrics, on hand-computed cases."""
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from she_lib.labels import ESCI, WANDS, get_scale
from she_lib.metrics import (UNPARSED, bootstrap_ci, chance_agreement, classification_metrics, grade_auroc, grade_tv,
                             metrics_from_confusion, per_group_confusion)


def test_esci_mapping_follows_design_table():
    assert [ESCI.word(r) for r in "ESCI"] == ["Exact", "Substitute", "Complement", "Irrelevant"]
    assert ESCI.grades == {"Exact": 4, "Substitute": 3, "Complement": 2, "Irrelevant": 1}
    assert ESCI.taobao["Complement"] == "2-Mismatch"
    assert WANDS.grades == {"Exact": 3, "Partial": 2, "Irrelevant": 1}
    assert ESCI.word(" e ") == "Exact" and ESCI.find(" substitute. ") == "Substitute"
    assert ESCI.find("Exactly") is None
    with pytest.raises(KeyError, match="unknown label 'X'"):
        ESCI.word("X")
    with pytest.raises(KeyError, match="unknown grade scale"):
        get_scale("nope")
    assert get_scale("wands") is WANDS and get_scale(ESCI) is ESCI  # a scale passes through: callers take either


def test_metrics_hand_computed():
    labels = ["A", "B"]
    y = ["A", "A", "A", "B"]
    p = ["A", "B", None, "B"]
    m = classification_metrics(y, p, labels)
    # A: tp 1, predicted 1 -> P 1, R 1/3, F1 0.5 ; B: tp 1, predicted 2 -> P 0.5, R 1, F1 2/3
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class_f1"] == pytest.approx({"A": 0.5, "B": 2 / 3})
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["parse_failure_rate"] == pytest.approx(0.25)
    assert m["confusion_matrix"]["rows_true_cols_pred"] == [[1, 1, 1], [0, 1, 0]]
    assert m["confusion_matrix"]["labels"] == ["A", "B", UNPARSED]
    assert m["per_class"]["A"]["support"] == 3


def test_confusion_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    labels = list(ESCI.words)
    y = rng.choice(labels, 300).tolist()
    p = [None if rng.random() < 0.1 else rng.choice(labels) for _ in y]
    _, cms = per_group_confusion(y, p, [i % 7 for i in range(300)], labels)
    acc, mf1 = metrics_from_confusion(cms.sum(0))
    pp = [x if x else UNPARSED for x in p]
    assert acc == pytest.approx(np.mean([a == b for a, b in zip(y, pp)]))
    assert mf1 == pytest.approx(f1_score(y, pp, labels=labels, average="macro", zero_division=0))


def test_bootstrap_two_queries():
    # query q1 all right, q2 all wrong: replicates are {q1,q1}:1, {q1,q2}:0.5, {q2,q2}:0 accuracy,
    # with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1] and the median 0.5.
    y = ["A", "A", "B", "B"]
    p = ["A", "A", "A", "A"]
    g = ["q1", "q1", "q2", "q2"]
    ci = bootstrap_ci(y, p, g, ["A", "B"], n_samples=2000, seed=1)
    assert ci["accuracy_ci"] == [0.0, 1.0]
    perfect = bootstrap_ci(y, y, g, ["A", "B"], n_samples=200, seed=1)
    assert perfect["accuracy_ci"] == [1.0, 1.0]
    # a replicate holding only q1 has no B example: F1(B) = 0 (sklearn's zero_division=0), macro 0.5
    assert perfect["macro_f1_ci"] == [0.5, 1.0]


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    y = rng.choice(["A", "B"], 100).tolist()
    p = rng.choice(["A", "B"], 100).tolist()
    g = [i // 10 for i in range(100)]
    a = bootstrap_ci(y, p, g, ["A", "B"], 300, seed=5)
    assert a == bootstrap_ci(y, p, g, ["A", "B"], 300, seed=5)
    lo, hi = a["macro_f1_ci"]
    assert 0 <= lo <= hi <= 1


def test_empty_input_raises():
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [], ["A"])


# ------------------------------------------------------------------------------- paired bootstrap
def _two_queries():
    # q1: one Exact pair, q2: one Substitute pair; A is right on both, B says Exact on both
    return ["Exact", "Substitute"], ["Exact", "Substitute"], ["Exact", "Exact"], ["q1", "q2"]


def test_paired_bootstrap_exact_enumeration_by_hand():
    from she_lib.metrics import paired_bootstrap

    y, a, b, g = _two_queries()
    r = paired_bootstrap(y, a, b, g, ["Exact", "Substitute"], n_samples=None)
    # resamples {q1,q1} p=1/4, {q1,q2} p=1/2, {q2,q2} p=1/4
    # accuracy: A 1, 1, 1; B 1, 1/2, 0 -> d* = 0, 1/2, 1; observed d = 1/2
    assert r["accuracy_diff"] == pytest.approx(0.5) and r["accuracy_diff_ci"] == [0.0, 1.0]
    assert r["accuracy_p"] == pytest.approx(0.5)  # |d* - 1/2| >= 1/2 for d* = 0 and 1: 1/4 + 1/4
    # macro-F1: {q1,q1}: A = B = (1 + 0)/2 (no Substitute at all); {q2,q2}: A (0 + 1)/2, B 0;
    # {q1,q2}: A 1, B (2/3 + 0)/2 -> d* = 0, 1/2, 2/3 with probabilities 1/4, 1/4, 1/2; d = 2/3
    assert r["macro_f1_diff"] == pytest.approx(2 / 3)
    assert r["macro_f1_diff_ci"] == pytest.approx([0.0, 2 / 3])
    assert r["macro_f1_p"] == pytest.approx(0.25)  # only d* = 0 is as far from 2/3 as 2/3 is from 0
    assert r["n_queries"] == 2 and r["exact"] and r["n_samples"] == 3


def test_paired_bootstrap_identical_methods_give_zero_and_p_one():
    from she_lib.metrics import paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.choice(list(ESCI.words), 60).tolist()
    p = rng.choice(list(ESCI.words), 60).tolist()
    for n in (None, 300):
        r = paired_bootstrap(y, p, list(p), [i % 5 for i in range(60)], ESCI.words, n_samples=n, seed=2)
        assert r["accuracy_diff"] == 0 and r["macro_f1_diff"] == 0
        assert r["accuracy_diff_ci"] == [0.0, 0.0] and r["macro_f1_diff_ci"] == [0.0, 0.0]
        assert r["accuracy_p"] == 1.0 and r["macro_f1_p"] == 1.0


def test_paired_bootstrap_exact_matches_brute_force_over_ordered_resamples():
    """Enumerate all Q^Q ordered draws of queries, score each with scikit-learn on the concatenated pairs."""
    import itertools

    from she_lib.metrics import paired_bootstrap

    rng = np.random.default_rng(4)
    labels = ["A", "B", "C"]
    q = 4
    groups = [i % q for i in range(14)]
    y = rng.choice(labels, 14).tolist()
    a = [None if rng.random() < 0.2 else rng.choice(labels) for _ in y]
    b = rng.choice(labels, 14).tolist()
    ua, ub = [x or UNPARSED for x in a], b

    def f1(t, p):
        return f1_score(t, p, labels=labels, average="macro", zero_division=0)

    d_obs = f1(y, ua) - f1(y, ub)
    diffs = []
    for draw in itertools.product(range(q), repeat=q):
        idx = [i for g in draw for i in range(14) if groups[i] == g]
        t = [y[i] for i in idx]
        diffs.append(f1(t, [ua[i] for i in idx]) - f1(t, [ub[i] for i in idx]))
    diffs = np.array(diffs)
    r = paired_bootstrap(y, a, b, groups, labels, n_samples=None)
    assert r["macro_f1_diff"] == pytest.approx(d_obs)
    assert r["macro_f1_p"] == pytest.approx(np.mean(np.abs(diffs - d_obs) >= abs(d_obs) - 1e-12))
    assert r["macro_f1_diff_ci"] == pytest.approx(np.quantile(diffs, [0.025, 0.975], method="inverted_cdf").tolist())
    # Monte Carlo draws approach the exact answer
    mc = paired_bootstrap(y, a, b, groups, labels, n_samples=20000, seed=0)
    assert mc["macro_f1_p"] == pytest.approx(r["macro_f1_p"], abs=0.02)
    assert mc["macro_f1_diff"] == r["macro_f1_diff"]


def test_query_resamples_weights_and_limits():
    from she_lib.metrics import query_resamples

    counts, w = query_resamples(3, None)
    assert len(counts) == 10 and (counts.sum(1) == 3).all() and w.sum() == pytest.approx(1)
    # (3,0,0) has probability 1/27, (1,1,1) 6/27
    assert w[(counts == [3, 0, 0]).all(1)][0] == pytest.approx(1 / 27)
    assert w[(counts == [1, 1, 1]).all(1)][0] == pytest.approx(6 / 27)
    counts, w = query_resamples(5, 7, seed=1)
    assert counts.shape == (7, 5) and (counts.sum(1) == 5).all() and np.allclose(w, 1 / 7)
    with pytest.raises(ValueError, match="too large"):
        query_resamples(11, None)


def test_significance_table_uses_pairs_both_methods_predicted():
    import pandas as pd

    from she_lib.metrics import default_pairs, paired_bootstrap, significance_table

    y, a, b, g = _two_queries()
    preds = pd.DataFrame({"label": y + ["Exact"], "query": ["Q1", "q2", "q3"], "x": a + ["Exact"],
                          "lexical": b + [np.nan]})
    t = significance_table(preds, [("x", "lexical")], ["Exact", "Substitute"], n_samples=None)
    r = paired_bootstrap(y, a, b, ["q1", "q2"], ["Exact", "Substitute"], n_samples=None)
    assert t.loc[0, "pairs"] == 2 and t.loc[0, "queries"] == 2  # q3 dropped: lexical has no prediction there
    assert t.loc[0, "accuracy A-B"] == 0.5 and t.loc[0, "accuracy p"] == 0.5 and t.loc[0, "macro_f1 p"] == 0.25
    assert t.loc[0, "macro_f1 95% CI"] == "[0.000, 0.667]" and r["macro_f1_diff"] == pytest.approx(2 / 3)
    assert default_pairs(["lexical", "sft_first_token", "sft_cumpt", "dpo_cumpt"]) == [
        ("sft_first_token", "lexical"), ("sft_cumpt", "lexical"), ("dpo_cumpt", "lexical"),
        ("dpo_cumpt", "sft_cumpt"), ("sft_cumpt", "sft_first_token")]
    # trained methods against SFT in the same read-out; SRPO/AGRL against GRPO at the same seed; no lexical here
    ms = ["sft", "sft_first_token", "grpo_s1", "grpo_s1_first_token", "srpo_s1", "srpo_s1_first_token", "agrl",
          "grpo", "sft_steps_first", "zero_shot", "srpo_bal_s1", "grpo_bal_s1"]
    assert default_pairs(ms) == [
        ("grpo_s1", "sft"), ("grpo_s1_first_token", "sft_first_token"), ("srpo_s1", "sft"),
        ("srpo_s1_first_token", "sft_first_token"), ("agrl", "sft"), ("grpo", "sft"),
        ("srpo_bal_s1", "sft"), ("grpo_bal_s1", "sft"),
        ("srpo_s1", "grpo_s1"), ("srpo_s1_first_token", "grpo_s1_first_token"), ("agrl", "grpo"),
        ("srpo_bal_s1", "grpo_bal_s1")]
    assert default_pairs(["sft_first_token", "sft_prior", "sft_cumpt", "sft_probe"]) == [
        ("sft_cumpt", "sft_first_token"), ("sft_prior", "sft_first_token"), ("sft_probe", "sft_first_token")]
    assert default_pairs(["srpo_bal_s2_cumpt", "grpo_bal_s2_cumpt", "sft_cumpt", "grpo_s2_cumpt"]) == [
        ("srpo_bal_s2_cumpt", "sft_cumpt"), ("grpo_bal_s2_cumpt", "sft_cumpt"), ("grpo_s2_cumpt", "sft_cumpt"),
        ("srpo_bal_s2_cumpt", "grpo_bal_s2_cumpt")]


def test_parse_method_is_the_one_run_name_parser():
    from she_lib.metrics import method_key, parse_method

    assert parse_method("srpo_bal_s1_first_token") == {"family": "srpo", "variant": "_bal", "seed": 1,
                                                       "readout": "_first_token"}
    assert parse_method("sft_steps_first") == {"family": "sft", "variant": "_steps_first", "seed": 0, "readout": ""}
    assert parse_method("sft_steps_first_first_token")["variant"] == "_steps_first"
    assert parse_method("agrl_s12_cumpt") == {"family": "agrl", "variant": "", "seed": 12, "readout": "_cumpt"}
    assert parse_method("sft_first_token") == {"family": "sft", "variant": "", "seed": 0, "readout": "_first_token"}
    assert parse_method("sft_evidence_weighted_prior") == {"family": "sft", "variant": "_evidence_weighted", "seed": 0,
                                                           "readout": "_prior"}
    assert parse_method("sft_evidence_probe") == {"family": "sft", "variant": "_evidence", "seed": 0,
                                                  "readout": "_probe"}
    assert parse_method("grpo_bal_lr1e4_s2_first_token") == {"family": "grpo", "variant": "_bal_lr1e4", "seed": 2,
                                                             "readout": "_first_token"}  # digits inside a part
    assert [parse_method(k) for k in ("lexical", "zero_shot_first_token", "grpo_S1", "srpo_s1x", "grpo_1e4")] == [
        None] * 5
    for key in ("srpo_bal_s1_first_token", "sft_steps_first", "agrl_s12_cumpt", "grpo", "dpo_first_token"):
        assert method_key(**parse_method(key)) == key  # the inverse


def test_grade_tv_hand_computed():
    # true (3, 1), predicted (1, 2) and 1 unparsed: (|1 - 3| + |2 - 1| + |1 - 0|) / (2 * 4) = 0.5
    assert grade_tv({"rows_true_cols_pred": [[1, 1, 1], [0, 1, 0]]}) == pytest.approx(0.5)
    assert grade_tv({"rows_true_cols_pred": [[3, 0, 0], [0, 1, 0]]}) == 0.0
    # always the first grade: 1 - its share
    assert grade_tv({"rows_true_cols_pred": [[3, 0, 0], [1, 0, 0]]}) == pytest.approx(0.25)


def test_chance_agreement_hand_computed():
    # true (3, 1), predicted (3, 1): p_o = 2/4, p_e = 9/16 + 1/16, kappa = (1/2 - 5/8) / (3/8) = -1/3;
    # chance F1: 2 (3/4)(3/4) / (3/2) = 3/4 and 2 (1/4)(1/4) / (1/2) = 1/4, mean 1/2 (the read-out's own macro-F1 is 1/3)
    out = chance_agreement({"rows_true_cols_pred": [[2, 1, 0], [1, 0, 0]]})
    assert out["kappa"] == pytest.approx(-1 / 3) and out["chance_macro_f1"] == pytest.approx(0.5)
    # perfect: kappa 1, and the chance F1 is the shares' own (3/4, 1/4): mean 1/2
    assert chance_agreement({"rows_true_cols_pred": [[3, 0, 0], [0, 1, 0]]}) == pytest.approx(
        {"kappa": 1.0, "chance_macro_f1": 0.5})
    # one unparsed answer: p = (1/2, 1/2), q = (1/4, 1/2); p_o = 3/4, p_e = 1/8 + 1/4 = 3/8: kappa = (3/8) / (5/8);
    # chance F1 (2 (1/8) / (3/4) + 2 (1/4) / 1) / 2 = (1/3 + 1/2) / 2
    out = chance_agreement({"rows_true_cols_pred": [[1, 0, 1], [0, 2, 0]]})
    assert out["kappa"] == pytest.approx(0.6) and out["chance_macro_f1"] == pytest.approx(5 / 12)
    # a constant answer: kappa 0
    assert chance_agreement({"rows_true_cols_pred": [[3, 0, 0], [1, 0, 0]]})["kappa"] == 0.0


def test_chance_agreement_kappa_is_sklearns():
    rng = np.random.default_rng(0)
    words = ["Exact", "Substitute", "Complement", "Irrelevant"]
    y_true = list(rng.choice(words, 200, p=[0.5, 0.3, 0.05, 0.15]))
    y_pred = [t if rng.random() < 0.4 else rng.choice([*words, None]) for t in y_true]
    m = classification_metrics(y_true, y_pred, words)
    expect = cohen_kappa_score(y_true, [UNPARSED if p is None else p for p in y_pred])
    assert chance_agreement(m["confusion_matrix"])["kappa"] == pytest.approx(expect)



def test_grade_auroc_hand_computed():
    import pandas as pd
    y = ["Exact", "Exact", "Irrelevant", "Irrelevant"]
    probs = pd.DataFrame({"p_Exact": [0.9, 0.4, 0.5, 0.1], "p_Irrelevant": [0.1, 0.6, 0.5, 0.9]})
    # Exact pairs (0.9, 0.4) over the others (0.5, 0.1): 3 of 4 orderings right; Irrelevant (0.5, 0.9) over
    # (0.1, 0.6): 3 of 4
    out = grade_auroc(y, probs, ["Exact", "Irrelevant"])
    assert out == pytest.approx({"Exact": 0.75, "Irrelevant": 0.75})
    probs["p_Complement"] = 0.0  # a grade no pair has: undefined
    assert np.isnan(grade_auroc(y, probs, ["Complement"])["Complement"])


def test_paired_ratio_bootstrap_by_hand():
    """Two queries, pooled rates right / judged. A: 1/2 and 2/2 -> 3/4; B: 1/2 and 0/2 -> 1/4; d = 0.5. Every
    resample of two queries: (2, 0) w 1/4: 2/4 - 2/4 = 0; (1, 1) w 1/2: 0.5; (0, 2) w 1/4: 4/4 - 0/4 = 1.
    p = P(|d* - d| >= |d|) = 1/4 + 1/4 (the ties count); 95% CI [0, 1]."""
    from she_lib.metrics import paired_ratio_bootstrap

    r = paired_ratio_bootstrap([1, 2], [2, 2], [1, 0], [2, 2], n_samples=None)
    assert r["diff"] == pytest.approx(0.5) and r["p"] == pytest.approx(0.5) and r["diff_ci"] == [0.0, 1.0]
    # a resample whose A denominators sum to 0, (0, 2), is left out and the rest reweighted: d = 1/2 - 2/4 = 0,
    # both remaining resamples give 0, p = 1
    r = paired_ratio_bootstrap([1, 0], [2, 0], [1, 1], [2, 2], n_samples=None)
    assert r["diff"] == 0 and r["p"] == 1 and r["n_samples"] == 2
    with pytest.raises(ValueError, match="one non-zero length"):
        paired_ratio_bootstrap([1], [2], [1, 0], [2, 2])
    with pytest.raises(ValueError, match="over nothing"):
        paired_ratio_bootstrap([0, 0], [0, 0], [1, 0], [2, 2])
