"""RL comparison table (she_lib.rl_report) on hand-made metrics and training logs."""
import json

import pytest

from she_lib.rl_report import reward_tail, rl_table, run_name


def test_run_names_and_table(tmp_path):
    assert run_name("srpo", 0) == "srpo" and run_name("srpo", 2) == "srpo_s2"
    for name, rewards in {"srpo": [0.1, 0.5, 0.7], "srpo_s1": [0.2, 0.3, 0.5]}.items():
        (tmp_path / name).mkdir()
        log = [{"loss": 0.0, "step": i + 1, "reward": r} for i, r in enumerate(rewards)] + [{"train_runtime": 1.0}]
        (tmp_path / name / "train_log.json").write_text(json.dumps(log))
    assert reward_tail(tmp_path / "srpo", tail=2) == pytest.approx(0.6)
    m = lambda acc, f1, **kw: {"accuracy": acc, "macro_f1": f1, "macro_f1_ci": [f1 - 0.1, f1 + 0.1], "n_examples": 10, **kw}  # noqa: E731
    metrics = {"srpo": m(0.5, 0.4, step_accuracy=0.8, rule_violation_rate=0.1),
               "srpo_s1": m(0.7, 0.2, step_accuracy=0.6, rule_violation_rate=0.3),
               "srpo_first_token": m(0.6, 0.3), "sft": m(0.4, 0.3), "sft_steps_first": m(0, 0), "lexical": m(0.4, 0.3)}
    t = rl_table(metrics, tmp_path, tail=2).set_index(["method", "read-out"])
    assert list(t.index) == [("sft", "decoded"), ("srpo", "decoded"), ("srpo", "first token")]
    row = t.loc[("srpo", "decoded")]
    # two seeds: mean and sample std (ddof 1): accuracy 0.6 +- 0.1414, macro-F1 0.3 +- 0.1414
    assert row["seeds"] == 2 and row["accuracy"] == "0.600 ± 0.141" and row["macro-F1"] == "0.300 ± 0.141"
    assert row["macro-F1 CI (seed 0)"] == "[0.300, 0.500]"
    assert row["step accuracy"] == "0.700" and row["rule violations"] == "0.200"
    # final rewards (last 2 steps): 0.6 and 0.4 -> mean 0.5, std 0.1414
    assert row["final reward (seed std)"] == "0.500 (0.141)"
    assert t.loc[("sft", "decoded"), "final reward (seed std)"] == ""
