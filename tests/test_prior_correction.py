"""The prior-corrected read-out: argmax(log p + b), b tuned for validation macro-F1 (hand-computed cases)."""
import numpy as np
import pytest

from she_lib.prior_correction import PriorCorrectionConfig, corrected, tune_biases


def test_corrected_adds_biases_to_log_probabilities():
    p = [[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.0, 1.0, 0.0]]
    assert corrected(p, [0, 0, 0]).tolist() == [0, 0, 1]
    # log 0.3 + 1 = -0.204 > log 0.6 = -0.511; row 2: log 0.4 + 1 = 0.084 > log 0.5 = -0.693 > log 0.1 + 1 = -1.303
    assert corrected(p, [0, 1, 1]).tolist() == [1, 2, 1]
    assert corrected([[0.0, 0.0]], [0, 1]).tolist() == [1]  # zeros floored, no NaN


def test_tune_biases_finds_the_smallest_bias_that_separates_the_grades():
    # the model ranks B higher on the last two pairs but never above A: argmax says A four times, macro-F1 = (2/3 + 0) / 2
    p = [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]
    y = ["A", "A", "B", "B"]
    assert tune_biases(p, y, ["A", "B"], PriorCorrectionConfig(grid=(0.0,)))[1] == pytest.approx(1 / 3)
    # b_B must exceed log(0.7/0.3) = 0.847 and stay below log(0.8/0.2) = 1.386: grid 1.0 and 1.25 both give F1 = 1;
    # the tie goes to the one nearer 0
    b, f1 = tune_biases(p, y, ["A", "B"], PriorCorrectionConfig(grid=(-1.0, 0.0, 0.5, 1.0, 1.25, 2.0)))
    assert b.tolist() == [0.0, 1.0] and f1 == 1.0


def test_tune_biases_coordinate_ascent_over_three_grades():
    # C is never the argmax; b_C = 1 makes pair 3 a C (log 0.3 + 1 = -0.204 > log 0.4 = -0.916) and keeps pairs 1-2
    # (log 0.1 + 1 = -1.303 < log 0.8, log 0.7); B is already right, b_B stays 0 (a tie keeps the value nearest 0)
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.4, 0.3, 0.3]])
    b, f1 = tune_biases(p, ["A", "B", "C"], ["A", "B", "C"], PriorCorrectionConfig(grid=(0.0, 1.0, 2.0), rounds=2))
    assert b.tolist() == [0.0, 0.0, 1.0] and f1 == 1.0
