"""Error analysis on hand-made predictions, rationales and run folders."""
import json

import numpy as np
import pandas as pd
import pytest

from she_lib.error_analysis import (accuracy_by, before_after, confusion_by, correctness, first_wrong_steps,
                                    genrm_disagreements, hardest_queries, named_brand, query_kinds, rl_runs)
from she_lib.examiner import TableScorer
from she_lib.facts import example_facts
from she_lib.labels import ESCI
from she_lib.metrics import UNPARSED
from she_lib.rationales import teacher_rationale, teacher_steps
from she_lib.schema import STEPS, render_rationale
from she_lib.verifier import verify


def preds():
    return pd.DataFrame({"example_id": list("abcde"), "query": ["q1", "q1", "q2", "q2", "q2"],
                         "label": ["Exact", "Substitute", "Exact", "Irrelevant", "Exact"],
                         "a": ["Exact", "Exact", UNPARSED, "Irrelevant", "Exact"],
                         "b": ["Exact", "Substitute", "Exact", np.nan, "Substitute"]})


def test_accuracy_ignores_pairs_a_method_did_not_predict():
    p = preds()
    assert correctness(p, ["a", "b"])["b"].tolist()[:3] == [1.0, 1.0, 1.0] and np.isnan(correctness(p, ["b"])["b"][3])
    t = accuracy_by(p, ["a", "b"], "label")
    assert t.loc["Exact", "a"] == pytest.approx(2 / 3) and t.loc["Exact", "b"] == pytest.approx(2 / 3)
    assert t.loc["Irrelevant", "a"] == 1.0 and np.isnan(t.loc["Irrelevant", "b"])  # b has no Irrelevant prediction
    assert t["pairs"].tolist() == [3, 1, 1] and t.index[0] == "Exact"


def test_confusion_by_key():
    c = confusion_by(preds(), "a", "query", ESCI.words)
    assert c.loc[("q1", "Substitute"), "Exact"] == 1 and c.loc[("q2", "Exact"), UNPARSED] == 1
    assert c.loc[("q2", "Irrelevant"), "Irrelevant"] == 1 and c.to_numpy().sum() == 5
    assert list(c.columns) == [*ESCI.words, UNPARSED]
    assert confusion_by(preds(), "b", "query", ESCI.words).to_numpy().sum() == 4  # b skipped one pair


def test_query_kinds_negation_and_brand_substitutes():
    df = pd.DataFrame({"query": ["giotto water bottle", "giotto water bottle", "bottle without straw",
                                 "amazon basics binder", "the binder 123"],
                       "brand": ["Hydro Flask", "Giotto", "Giotto", "Amazon Basics", "123"],
                       "title": ["Water Bottle", "Bottle", "Bottle with straw", "Binder", "Binder"],
                       "negated_terms": [[], [], ["straw"], [], []]})
    k = query_kinds(df, brands=None)
    assert k["brand"].tolist() == ["giotto", "giotto", "", "amazon basics", ""]  # "123" is a number: not a brand
    assert k["other_brand"].tolist() == [True, False, False, False, False]
    assert k["kind"].tolist() == ["brand substitute", "brand, same brand", "negation", "brand, same brand", "other"]
    assert named_brand("Amazon basics 3 ring binder", ["amazon basics", "amazon"]) == "amazon basics"
    assert named_brand("amazonian binder", ["amazon"]) == ""  # whole words only


def test_hardest_queries_sorted_by_accuracy():
    p = preds()
    h = hardest_queries(p, "a", n=2)
    assert h.index.tolist() == ["q1", "q2"] and h["accuracy"].tolist() == [0.5, pytest.approx(2 / 3)]
    assert h.loc["q2", "labels"] == "Exact 2, Irrelevant 1"


def example(label="Substitute"):
    row = {"example_id": f"x:{label}", "query": "1/2 gallon water bottle without straw", "brand": "Giotto",
           "title": "Giotto Water Bottle with Straw", "colour": "Gray", "category": "Sports > Water Bottles",
           "bullets": "", "label": label}
    return {**row, **example_facts(row)}


def test_first_wrong_step_of_each_wrong_rationale():
    ex = example()
    steps = teacher_steps(ex)
    wrong_type = render_rationale({**steps, "type": "unrelated type; matches: water"}, "Substitute")
    wrong_attr_and_grade = render_rationale({**steps, "attr": "all specs met", "judge": "Exact: all met"}, "Exact")
    grade_only = render_rationale(steps, "Exact")  # every step right, the grade wrong
    rows = [{**ex, "rationale": teacher_rationale(ex)}, {**ex, "rationale": wrong_type},
            {**ex, "rationale": wrong_attr_and_grade}, {**ex, "rationale": grade_only},
            {**ex, "rationale": "no tags at all"}, {**ex, "rationale": teacher_rationale(ex), "truncated": True}]
    t = first_wrong_steps(rows)
    assert t["first_wrong"].tolist() == ["type", "attr", "grade", "unparsable", "overlength"]  # the teacher's is right
    assert t["correct"].tolist() == [True, False, False, False, False]
    assert "contradicts the label Substitute" in t.loc[0, "reason"] and t.loc[0, "reward"] == 0.0
    assert t.loc[2, "reason"] == "the grade differs from the human label" and np.isnan(t.loc[2, "reward"])


def test_genrm_verifier_disagreements():
    ex = example()
    text = teacher_rationale(ex)
    truth = verify(ex, text).vector()  # the verifier decides every step of the teacher's rationale
    assert not np.isnan(truth).any() and (truth == 1).all()
    scores = [0.9, 0.9, 0.2, 0.6, 0.9]  # the GenRM doubts the type step
    rows = [{**ex, "rationale": text, "origin": "teacher"},
            {**ex, "rationale": "unparsable", "origin": "policy"}]
    table, summary = genrm_disagreements(rows, TableScorer({text: scores, "unparsable": [0.5] * 5}))
    assert table[["step", "verifier", "genrm"]].values.tolist() == [["type", "correct", 0.2]]
    assert table.loc[0, "origin"] == "teacher" and "fits the label" in table.loc[0, "reason"]
    assert summary.loc["teacher", "steps"] == 5 and summary.loc["teacher", "agreement"] == pytest.approx(0.8)
    assert "policy" not in summary.index  # an unparsable rationale has no decided step


def test_rl_runs_and_before_after(tmp_path, smoke):
    runs = tmp_path / "runs"
    for name, info in (("sft", {"kind": "sft"}), ("srpo", {"kind": "srpo", "init_adapter": "../sft"}),
                       ("genrm", {"kind": "genrm"})):
        (runs / name).mkdir(parents=True)
        (runs / name / "run.json").write_text(json.dumps(info))
        (runs / name / "adapter_config.json").write_text("{}")
    assert rl_runs(smoke) == [("srpo", "sft")]
    p = preds()
    table, flips = before_after(p, "a", "b")  # pairs a, b, c, e (b made no prediction for d)
    assert table.loc["right", "right"] == 1 and table.loc["wrong", "right"] == 2 and table.loc["right", "wrong"] == 1
    assert flips["example_id"].tolist() == ["b", "c", "e"] and flips["change"].tolist() == ["fixed", "fixed", "broken"]
