"""Grade scales and metrics, on hand-computed cases."""
import numpy as np
import pytest
from sklearn.metrics import f1_score

from she_lib.labels import ESCI, WANDS, get_scale
from she_lib.metrics import (UNPARSED, bootstrap_ci, classification_metrics, metrics_from_confusion,
                             per_group_confusion)


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
