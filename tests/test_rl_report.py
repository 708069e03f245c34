"""RL comparison table (she_lib.rl_report) on hand-made metrics and training logs."""
import json

import pytest

from she_lib.rl_report import reward_tail, rl_table, run_name


def test_run_names_and_table(tmp_path):
    assert run_name("srpo", 0) == "srpo" and run_name("srpo", 2) == "srpo_s2"
    assert run_name("grpo", 0, "balanced") == "grpo_bal" and run_name("grpo", 1, "balanced") == "grpo_bal_s1"
    assert run_name("grpo", 1, "balanced", "batch") == "grpo_bal_batch_s1"
    assert run_name("grpo", 0, "random", "group") == "grpo"
    assert run_name("srpo", 1, "balanced", start="grade_head") == "srpo_gradehead_bal_s1"
    for name, rewards in {"srpo": [0.1, 0.5, 0.7], "srpo_s1": [0.2, 0.3, 0.5]}.items():
        (tmp_path / name).mkdir()
        log = [{"loss": 0.0, "step": i + 1, "reward": r} for i, r in enumerate(rewards)] + [{"train_runtime": 1.0}]
        (tmp_path / name / "train_log.json").write_text(json.dumps(log))
    assert reward_tail(tmp_path / "srpo", tail=2) == pytest.approx(0.6)
    m = lambda acc, f1, **kw: {"accuracy": acc, "macro_f1": f1, "macro_f1_ci": [f1 - 0.1, f1 + 0.1], "n_examples": 10, **kw}  # noqa: E731
    # seed 0 says Exact 4 times and fails to parse once for true (2, 1, 1, 1): TV = (2 + 1 + 1 + 1 + 1) / (2 * 5) = 0.6;
    # seed 1 is always right: TV 0
    cm0 = [[2, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]]
    cm1 = [[2, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]]
    metrics = {"srpo": m(0.5, 0.4, step_accuracy=0.8, rule_violation_rate=0.1,
                         confusion_matrix={"rows_true_cols_pred": cm0},
                         per_class_f1={"Exact": 0.67, "Substitute": 0.0, "Complement": 0.0, "Irrelevant": 0.0}),
               "srpo_s1": m(0.7, 0.2, step_accuracy=0.6, rule_violation_rate=0.3,
                            confusion_matrix={"rows_true_cols_pred": cm1},
                            per_class_f1={"Exact": 1.0, "Substitute": 1.0, "Complement": 1.0, "Irrelevant": 0.5}),
               "srpo_first_token": m(0.6, 0.3), "sft": m(0.4, 0.3), "sft_steps_first": m(0, 0), "lexical": m(0.4, 0.3),
               "srpo_bal_s1": m(0.3, 0.35)}
    t = rl_table(metrics, tmp_path, tail=2).set_index(["method", "read-out"])
    # the balanced prompt order (and SFT's other reasoning order) is a row of its own, after the default
    assert list(t.index) == [("sft", "decoded"), ("sft_steps_first", "decoded"), ("srpo", "decoded"),
                             ("srpo", "first token"), ("srpo_bal", "decoded")]
    assert t.loc[("srpo_bal", "decoded"), "seeds"] == 1 and t.loc[("srpo_bal", "decoded"), "accuracy"] == "0.300"
    row = t.loc[("srpo", "decoded")]
    # two seeds: mean and sample std (ddof 1): accuracy 0.6 +- 0.1414, macro-F1 0.3 +- 0.1414
    assert row["seeds"] == 2 and row["accuracy"] == "0.600 ± 0.141" and row["macro-F1"] == "0.300 ± 0.141"
    assert row["macro-F1 CI (seed 0)"] == "[0.300, 0.500]"
    assert row["step accuracy"] == "0.700" and row["rule violations"] == "0.200"
    assert row["grade TV"] == "0.300" and row["min class F1"] == "0.000"
    assert t.loc[("srpo", "first token"), "grade TV"] == ""  # no confusion matrix in that entry
    # seed 0: p = (2, 1, 1, 1) / 5, q = (4, 0, 0, 0) / 5, p_o = 2/5, p_e = 8/25: kappa = (2/25) / (17/25) = 2/17;
    # chance F1 = (2 (2/5)(4/5) / (6/5)) / 4 = 2/15, its macro-F1 0.4 is 4/15 above it. Seed 1: kappa 1, chance F1
    # mean(p) = 1/4, 0.2 is 0.05 under it. Means: (2/17 + 1) / 2 = 0.559, (4/15 - 1/20) / 2 = 0.108
    assert row["kappa"] == "0.559" and row["macro-F1 - chance"] == "0.108"
    assert t.loc[("srpo", "first token"), "kappa"] == ""
    # final rewards (last 2 steps): 0.6 and 0.4 -> mean 0.5, std 0.1414
    assert row["final reward (seed std)"] == "0.500 (0.141)"
    assert t.loc[("sft", "decoded"), "final reward (seed std)"] == ""


def test_write_report_from_finished_runs(tmp_path):
    """The cpu-full report path: finished runs found by kind, figure, table and replay counts written."""
    from she_lib.config import get_profile
    from she_lib.rl_report import finished_rl_runs, write_report

    runs, results = tmp_path / "runs", tmp_path / "results"
    for name, kind, done in [("srpo_s1", "srpo", True), ("grpo", "grpo", True), ("agrl", "agrl", True),
                             ("srpo", "srpo", True), ("grpo_s1", "grpo", False), ("sft", "sft", True)]:
        (runs / name).mkdir(parents=True)
        info = {"kind": kind, "finished": done, **({"replay": {"fired": 3, "recovered": 1}} if kind == "agrl" else {})}
        (runs / name / "run.json").write_text(json.dumps(info))
        log = [{"loss": 0.0, "step": i + 1, "reward": 0.1 * i, "entropy": 1.0, "stage": i // 2} for i in range(4)]
        (runs / name / "train_log.json").write_text(json.dumps(log))
    assert list(finished_rl_runs(runs)) == ["grpo", "srpo", "srpo_s1", "agrl"]
    results.mkdir()
    m = {"accuracy": 0.5, "macro_f1": 0.4, "macro_f1_ci": [0.3, 0.5], "n_examples": 10}
    gone = {**m, "run": {"replay": {"fired": 5, "recovered": 2}}}  # a run trained elsewhere: its entry keeps replay
    (results / "metrics.json").write_text(json.dumps({"grpo": m, "srpo_first_token": m, "lexical": m,
                                                      "agrl_bal_s1_first_token": gone}))
    (results / "esci_us_wide_test").mkdir()  # the wide test split's scores get a table of their own
    (results / "esci_us_wide_test" / "metrics.json").write_text(json.dumps({"agrl_first_token": m}))
    from she_lib.config import REPO_ROOT

    table = write_report(get_profile("smoke", runs_dir=str(runs), results_dir=str(results),
                                     extra_eval_dirs=(str(REPO_ROOT / "data_samples" / "esci_us_wide"),)))
    assert list(zip(table["method"], table["read-out"])) == [("grpo", "decoded"), ("srpo", "first token"),
                                                             ("agrl_bal", "first token")]
    wide = (results / "esci_us_wide_test" / "rl_table.md").read_text()
    assert "| agrl " in wide and "| grpo " not in wide
    assert "(no pairs)" in (results / "esci_us_wide_test" / "rl_significance.md").read_text()  # no read-outs cached
    assert (results / "figures" / "04_rl_training.png").stat().st_size > 1000
    import matplotlib.pyplot as plt

    from she_lib.rl_report import plot_training

    for name in ("grpo", "agrl"):  # GRPO logs no step reward: a run keeps its colour in every panel anyway
        log = [{"loss": 0.0, "step": 1, "reward": 0.5, **({"srpo/step_reward": 0.3} if name == "agrl" else {})}]
        (runs / name / "train_log.json").write_text(json.dumps(log))
    fig = plot_training({"grpo": runs / "grpo", "agrl": runs / "agrl"})
    colours = [{ln.get_label(): ln.get_color() for ln in ax.get_lines()} for ax in fig.axes]
    assert colours[0]["agrl"] == colours[2]["agrl"] != colours[0]["grpo"] and "grpo" not in colours[2]
    plt.close(fig)
    assert "| grpo " in (results / "rl_table.md").read_text()
    assert json.loads((results / "rl_replay.json").read_text()) == {"agrl": {"fired": 3, "recovered": 1},
                                                                    "agrl_bal_s1": {"fired": 5, "recovered": 2}}
    assert not (results / "rl_grade_shift.md").exists()  # no first-token read-out cached


def test_grade_shift_from_first_token_caches(tmp_path):
    from she_lib.rl_report import grade_shift

    words = ("Exact", "Substitute", "Complement", "Irrelevant")
    probs = {"sft": [[0.6, 0.3, 0.0, 0.1], [0.2, 0.7, 0.0, 0.1]], "grpo": [[0.9, 0.1, 0.0, 0.0], [0.8, 0.1, 0.0, 0.1]]}
    for name, ps in probs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"kind": name, "finished": True}))
        (tmp_path / name / "adapter_config.json").write_text("{}")  # a policy run (evaluate.policy_runs)
        rows = [{"example_id": f"e{i}", "pred": words[max(range(4), key=p.__getitem__)],
                 **{f"p_{w}": x for w, x in zip(words, p)}} for i, p in enumerate(ps)]
        (tmp_path / name / "predictions_test_first_token_grade_first.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    from she_lib.config import get_profile

    t = grade_shift(get_profile("smoke", runs_dir=str(tmp_path), results_dir=str(tmp_path / "results")),
                    runs=("sft", "dpo"))
    assert list(t.index) == ["sft", "grpo"]  # dpo has no cache; RL runs follow
    assert t.loc["sft", "mean P(Exact)"] == pytest.approx(0.4) and t.loc["sft", "argmax Exact"] == 0.5
    assert t.loc["grpo", "mean P(Exact)"] == pytest.approx(0.85) and t.loc["grpo", "argmax Exact"] == 1.0
    assert t.loc["grpo", "argmax Substitute"] == 0.0 and t.loc["sft", "pairs"] == 2


def test_rl_significance_pairs_and_differences(tmp_path, splits):
    """Each RL run against SFT, SRPO / AGRL against their GRPO partner or the table's GRPO; A - B exact."""
    from sklearn.metrics import f1_score

    from she_lib.config import get_profile
    from she_lib.rl_report import rl_significance

    test = splits["test"]
    words = ["Exact", "Substitute", "Complement", "Irrelevant"]
    preds = {"sft": list(test["label"]), "grpo_bal": ["Exact"] * len(test), "agrl_bal": list(test["label"]),
             "agrl_bal_s1": ["Exact"] * len(test)}
    for name, pred in preds.items():
        (tmp_path / name).mkdir()
        kind = name.split("_")[0]
        (tmp_path / name / "run.json").write_text(json.dumps({"kind": kind, "finished": True}))
        (tmp_path / name / "adapter_config.json").write_text("{}")
        rows = [{"example_id": e, "pred": g, **{f"p_{w}": float(w == g) for w in words}}
                for e, g in zip(test["example_id"], pred)]
        (tmp_path / name / "predictions_test_first_token_grade_first.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    sig = rl_significance(get_profile("smoke", runs_dir=str(tmp_path), results_dir=str(tmp_path / "results")), test)
    pairs = list(zip(sig["A"].str.replace("_first_token", ""), sig["B"].str.replace("_first_token", "")))
    assert pairs == [("grpo_bal", "sft"), ("agrl_bal", "sft"), ("agrl_bal_s1", "sft"), ("agrl_bal", "grpo_bal"),
                     ("agrl_bal_s1", "grpo_bal")]  # no grpo_bal_s1: the table's GRPO (seed 0) stands in
    row = sig.set_index(["A", "B"]).loc[("agrl_bal_first_token", "grpo_bal_first_token")]
    f1 = {n: f1_score(test["label"], preds[n], labels=words, average="macro", zero_division=0) for n in preds}
    exact = f1["agrl_bal"] - f1["grpo_bal"]  # a grade absent from both truth and predictions scores 0
    assert row["macro_f1 A-B"] == round(exact, 3) and row["pairs"] == len(test)
    assert sig.set_index(["A", "B"]).loc[("agrl_bal_first_token", "sft_first_token"), "macro_f1 A-B"] == 0


def test_archived_read_outs_stand_in_for_missing_runs(tmp_path, splits):
    """A clone with results/ but no runs/: the paired tests and the grade shift read the archived predictions
    (results/predictions/<method>.jsonl.gz); a run's own cache wins over its archive."""
    import pandas as pd

    from she_lib.config import get_profile
    from she_lib.evaluate import prediction_files
    from she_lib.predictions import archive_predictions, archived_predictions, read_predictions
    from she_lib.rl_report import grade_shift, grade_skill, rl_runs_read, rl_significance

    test, words = splits["test"], ["Exact", "Substitute", "Complement", "Irrelevant"]
    runs, results = tmp_path / "runs", tmp_path / "results"
    prof = get_profile("smoke", runs_dir=str(runs), results_dir=str(results))
    frame = lambda pred: pd.DataFrame({"example_id": test["example_id"], "pred": pred, "completion": "x",  # noqa: E731
                                       **{f"p_{w}": [float(w == g) for g in pred] for w in words}})
    archive_predictions(results, "sft_first_token", frame(list(test["label"])))
    archive_predictions(results, "grpo_bal_first_token", frame(["Exact"] * len(test)))
    archive_predictions(results, "srpo_bal_first_token", frame(list(test["label"])))
    path = archived_predictions(results)["srpo_bal_first_token"]
    assert path.name == "srpo_bal_first_token.jsonl.gz"
    back = read_predictions(path)  # grades, probabilities and the rationale are archived
    assert list(back["completion"]) == ["x"] * len(test) and list(back["pred"]) == list(test["label"])
    assert "p_Exact" in back
    assert prediction_files(prof) == {} and set(prediction_files(prof, archived=True)) == {
        "sft_first_token", "grpo_bal_first_token", "srpo_bal_first_token"}
    sig = rl_significance(prof, test)
    pairs = list(zip(sig["A"].str.replace("_first_token", ""), sig["B"].str.replace("_first_token", "")))
    assert pairs == [("grpo_bal", "sft"), ("srpo_bal", "sft"), ("srpo_bal", "grpo_bal")]
    assert sig.set_index(["A", "B"]).loc[("grpo_bal_first_token", "sft_first_token"), "accuracy A-B"] < 0
    assert list(grade_shift(prof, runs=("sft",)).index) == ["sft", "grpo_bal", "srpo_bal"]
    # skill: the SFT read-out is the labels with one-hot probabilities (kappa 1, AUROC 1); GRPO says Exact with
    # P = 1 for every pair: kappa 0, its macro-F1 is the chance one, every AUROC 0.5 (all ties)
    skill = grade_skill(prof, test)
    assert list(skill.index) == ["sft", "grpo_bal", "srpo_bal"] and (skill["pairs"] == len(test)).all()
    present = [w for w in words if 0 < (test["label"] == w).sum() < len(test)]
    assert skill.loc["sft", "kappa"] == pytest.approx(1.0)
    assert all(skill.loc["sft", f"AUROC {w}"] == pytest.approx(1.0) for w in present)
    assert skill.loc["grpo_bal", "kappa"] == pytest.approx(0.0)
    assert skill.loc["grpo_bal", "macro-F1"] == pytest.approx(skill.loc["grpo_bal", "chance macro-F1"])
    assert skill.loc["grpo_bal", "mean AUROC"] == pytest.approx(0.5)
    # the run's own cache, where the run is here, is read instead of the archive
    (runs / "sft").mkdir(parents=True)
    (runs / "sft" / "run.json").write_text(json.dumps({"kind": "sft", "finished": True}))
    (runs / "sft" / "adapter_config.json").write_text("{}")
    frame(["Irrelevant"] * len(test)).to_json(runs / "sft" / "predictions_test_first_token_grade_first.jsonl",
                                              orient="records", lines=True)
    assert prediction_files(prof, archived=True)["sft_first_token"].parent == runs / "sft"
    assert rl_runs_read(["agrl_bal_s1_first_token", "srpo_bal", "grpo_bal_s2", "grpo_bal", "sft_first_token",
                         "grpo_bal_cumpt", "lexical"]) == ["grpo_bal", "grpo_bal_s2", "srpo_bal", "agrl_bal_s1"]


def test_final_reward_from_the_run_or_its_metrics_entry(tmp_path):
    """The table's final reward: the run's training log where the run is here, else the value its run.json kept."""
    from she_lib.rl_report import final_reward

    (tmp_path / "grpo").mkdir()
    log = [{"loss": 0.0, "step": i + 1, "reward": r} for i, r in enumerate([0.1, 0.2, 0.6])]
    (tmp_path / "grpo" / "train_log.json").write_text(json.dumps(log))
    entry = {"run": {"final_reward": 0.9}}
    assert final_reward(tmp_path / "grpo", entry, tail=2) == pytest.approx(0.4)  # (0.2 + 0.6) / 2: the log wins
    assert final_reward(tmp_path / "gone", entry) == 0.9 and final_reward(tmp_path / "gone", {"run": {}}) is None
    m = {"accuracy": 0.5, "macro_f1": 0.4, "n_examples": 10, "run": {"final_reward": 0.25}}
    t = rl_table({"srpo_first_token": m, "srpo_s1_first_token": {**m, "run": {"final_reward": 0.75}}}, tmp_path)
    assert t.loc[0, "final reward (seed std)"] == "0.500 (0.354)"  # mean 0.5, sample std of (0.25, 0.75)


def test_grpo_partner_order():
    """Same variant and seed, else the best GRPO setting of the same seed, then plain balanced GRPO, then seed 0."""
    from she_lib.rl_report import grpo_partner

    have = {"grpo_bal", "grpo_bal_recall_explore_s1", "grpo_bal_explore", "grpo_bal_s2"}
    assert grpo_partner("srpo_bal_explore", have) == "grpo_bal_explore"
    assert grpo_partner("agrl_bal_half_hint_s1", have) == "grpo_bal_recall_explore_s1"
    assert grpo_partner("agrl_bal_half_hint_s2", have) == "grpo_bal_s2"
    assert grpo_partner("agrl_bal_half_hint", have) == "grpo_bal"
    assert grpo_partner("agrl_bal_half_hint", {"sft"}) is None


def test_sft_start_from_the_read_outs_run_record():
    from she_lib.rl_report import sft_start

    metrics = {"grpo_head_first_token": {"run": {"init_adapter": "../sft_head"}},
               "grpo_bal": {"run": {"init_adapter": "../sft"}}, "srpo_bal_first_token": {"accuracy": 0.5}}
    assert sft_start("grpo_head", metrics) == "sft_head"  # the first-token entry's record
    assert sft_start("grpo_bal", metrics) == "sft"  # the decoded entry's, when no first-token one
    assert sft_start("srpo_bal", metrics) == "sft" and sft_start("agrl", {}) == "sft"  # no record: the default


def test_step_significance_of_archived_decoded_read_outs(tmp_path, splits):
    """Decoded read-outs archived with their rationales: SFT and SRPO write the teacher's rationale (every judged
    step right, no rule broken), GRPO the teacher's steps for a wrong grade under the right grade (its judgement is
    wrong and contradicts its grade). Step accuracy SRPO - GRPO > 0 on every resample, SRPO - SFT exactly 0 (p = 1);
    the same for rule violations with the signs turned."""
    import pandas as pd

    from she_lib.config import get_profile
    from she_lib.predictions import archive_predictions
    from she_lib.rationales import teacher_rationale
    from she_lib.rl_report import step_outcomes, step_significance

    test = splits["test"].head(12)
    wrong = {"Exact": "Irrelevant", "Substitute": "Irrelevant", "Complement": "Exact", "Irrelevant": "Exact"}
    right = [teacher_rationale(r) for r in test.to_dict("records")]
    flipped = [teacher_rationale({**r, "label": wrong[r["label"]]}).replace(
        f"<grade>{wrong[r['label']]}</grade>", f"<grade>{r['label']}</grade>") for r in test.to_dict("records")]
    results = tmp_path / "results"
    prof = get_profile("smoke", runs_dir=str(tmp_path / "runs"), results_dir=str(results))
    for name, texts in (("sft", right), ("grpo_bal", flipped), ("srpo_bal", right)):
        archive_predictions(results, name, pd.DataFrame({"example_id": test["example_id"], "pred": "Exact",
                                                         "completion": texts}))
    out = step_outcomes(test.assign(c=right), "c", "esci")
    assert (out["right"] == out["judged"]).all() and (out["judged"] > 0).all() and (out["broken"] == 0).all()
    sig = step_significance(prof, test).set_index(["A", "B"])
    assert list(sig.index) == [("grpo_bal", "sft"), ("srpo_bal", "sft"), ("srpo_bal", "grpo_bal")]
    assert (sig["pairs"] == len(test)).all()
    srpo_sft, srpo_grpo = sig.loc[("srpo_bal", "sft")], sig.loc[("srpo_bal", "grpo_bal")]
    assert srpo_sft["step accuracy A-B"] == 0 and srpo_sft["step accuracy p"] == 1
    assert srpo_grpo["step accuracy A-B"] > 0 and srpo_grpo["step accuracy 95% CI"].startswith("[0.")
    assert srpo_grpo["rule violations A-B"] == -1 and srpo_grpo["rule violations p"] < 0.05
    assert srpo_sft["rule violations A-B"] == 0


def test_rl_pairs_take_the_grpo_partner_from_the_same_start():
    """An SRPO / AGRL run is tested against GRPO from the SFT run it started from: the named partner among those,
    else the one GRPO variant there with its seed; a GRPO run from another start is never its partner."""
    from she_lib.rl_report import rl_pairs

    start = lambda s: {"run": {"init_adapter": f"../{s}"}}  # noqa: E731
    metrics = {"grpo_bal_first_token": start("sft"), "grpo_gh_online_first_token": start("sft_gh"),
               "grpo_gh_online_s1_first_token": start("sft_gh"), "agrl_gh_hint_s1_first_token": start("sft_gh"),
               "agrl_gh_hint_first_token": start("sft_gh"), "srpo_bal_first_token": start("sft")}
    have = {"sft", "sft_gh", "grpo_bal", "grpo_gh_online", "grpo_gh_online_s1", "agrl_gh_hint_s1", "srpo_bal",
            "agrl_gh_hint"}
    runs = ["grpo_bal", "grpo_gh_online", "grpo_gh_online_s1", "srpo_bal", "agrl_gh_hint", "agrl_gh_hint_s1"]
    pairs = rl_pairs(runs, have, metrics)
    assert [p for p in pairs if p[0].startswith(("srpo", "agrl"))][-3:] == [
        ("srpo_bal", "grpo_bal"), ("agrl_gh_hint", "grpo_gh_online"), ("agrl_gh_hint_s1", "grpo_gh_online_s1")]
    assert ("agrl_gh_hint", "sft_gh") in pairs and ("grpo_bal", "sft") in pairs


def test_ablation_pairs_drop_the_last_part_of_the_variant():
    """A run is also tested against the run its name extends by one part, same family and seed (the hybrid examiner
    against the verifier alone, a KL anchor against none), when that run was read."""
    from she_lib.rl_report import ablation_partner, rl_pairs

    assert ablation_partner("srpo_gh_online_genrm_s1") == "srpo_gh_online_s1"
    assert ablation_partner("srpo_gh_online_steps54_kl004_first_token") == "srpo_gh_online_steps54"
    assert ablation_partner("srpo_gh") is None and ablation_partner("srpo") is None and ablation_partner("lexical") is None
    have = {"sft_gh", "srpo_gh_online", "srpo_gh_online_genrm", "srpo_gh_online_genrm_s1"}
    metrics = {f"{n}_first_token": {"run": {"init_adapter": "../sft_gh"}} for n in have}
    pairs = rl_pairs(["srpo_gh_online_genrm", "srpo_gh_online_genrm_s1"], have, metrics)
    assert ("srpo_gh_online_genrm", "srpo_gh_online") in pairs
    assert not [p for p in pairs if p[0] == "srpo_gh_online_genrm_s1" and p[1] != "sft_gh"]  # its partner was not read


def test_rl_significance_reads_decoded_runs_without_a_first_token(tmp_path, splits):
    """A steps-first start and its RL runs are decoded only: they are paired on their decoded read-outs, on the rows
    both decoded (A - B exact); a run with a first-token read-out keeps being paired on it."""
    import pandas as pd
    from sklearn.metrics import f1_score

    from she_lib.config import get_profile
    from she_lib.predictions import archive_predictions
    from she_lib.results import save_metrics
    from she_lib.rl_report import rl_significance

    test, words = splits["test"], ["Exact", "Substitute", "Complement", "Irrelevant"]
    results = tmp_path / "results"
    prof = get_profile("smoke", runs_dir=str(tmp_path / "runs"), results_dir=str(results))
    half = test.iloc[: len(test) // 2]  # decoded on half the pairs, as the read-outs of a few pairs a query
    frame = lambda rows, pred: pd.DataFrame({"example_id": rows["example_id"], "pred": pred,  # noqa: E731
                                             "completion": "x"})
    preds = {"sft_steps_first": list(half["label"]), "grpo_stepsfirst": ["Exact"] * len(half),
             "srpo_stepsfirst": list(half["label"][:-1]) + ["Irrelevant"]}
    for name, pred in preds.items():
        archive_predictions(results, name, frame(half, pred))
        if name != "sft_steps_first":
            save_metrics(results, name, {"run": {"init_adapter": "../sft_steps_first"}})
    archive_predictions(results, "sft_first_token", frame(test, list(test["label"])))
    archive_predictions(results, "grpo_bal_first_token", frame(test, ["Exact"] * len(test)))
    sig = rl_significance(prof, test).set_index(["A", "B"])
    assert list(sig.index) == [("grpo_bal_first_token", "sft_first_token"), ("grpo_stepsfirst", "sft_steps_first"),
                               ("srpo_stepsfirst", "sft_steps_first"), ("srpo_stepsfirst", "grpo_stepsfirst")]
    f1 = {n: f1_score(half["label"], p, labels=words, average="macro", zero_division=0) for n, p in preds.items()}
    row = sig.loc[("srpo_stepsfirst", "grpo_stepsfirst")]
    assert row["pairs"] == len(half) and row["macro_f1 A-B"] == round(f1["srpo_stepsfirst"] - f1["grpo_stepsfirst"], 3)
