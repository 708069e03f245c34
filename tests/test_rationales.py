"""Offline teacher (consistent with the ESCI definitions) and the LLM teacher's rejection filter."""
import numpy as np
import pandas as pd
import pytest

from she_lib import rationales
from she_lib.data import load_splits
from she_lib.labels import ESCI
from she_lib.rationales import (LLMTeacher, LLMTeacherConfig, accept, teacher_rationale, teacher_steps,
                                verdict_sources)
from she_lib.schema import parse, render_rationale

BASE = {"query_terms": ["leather", "belt"], "negated_terms": ["buckle"], "product_type": "Belts",
        "brand": "Levi's", "colour": "Brown", "matched_terms": ["leather", "belt"], "missing_terms": [],
        "negation_hits": ["buckle"], "negation_met": []}


@pytest.mark.parametrize("label, type_verdict, attr_verdict", [
    ("Exact", "same type", "some specs unstated"),  # the stated buckle: Exact rules "fail" out
    ("Substitute", "same type", "some specs fail"),
    ("Complement", "complementary type", "some specs fail"),
    ("Irrelevant", "same type", "some specs fail"),  # head word matches and a spec fails: a central aspect fails
])
def test_teacher_verdicts_follow_esci_definitions(label, type_verdict, attr_verdict):
    p = parse(teacher_rationale(dict(BASE, label=label)), ESCI)
    assert p.well_formed and p.grade == label and p.judge_grade == label
    assert p.steps["type"].verdict == type_verdict and p.steps["attr"].verdict == attr_verdict


# "brown leather belt without buckle": head belt, specs brown, leather, no buckle; facts by hand per listing
Q = {"query": "brown leather belt without buckle", "query_terms": ["brown", "leather", "belt"],
     "negated_terms": ["buckle"], "product_type": "Belts", "brand": "Levi's", "colour": "Brown"}
ALL = {"matched_terms": ["brown", "leather", "belt"], "missing_terms": []}
QUERY_STEP = "wants: belt; specs: brown, leather; excludes: buckle"
CASES = [  # label, facts, type, attr, judge, (type source, attr source)
    ("Exact", {**ALL, "negation_hits": [], "negation_met": ["buckle"]},  # everything stated
     "same type; matches: belt", "all specs met; met: brown, leather, no buckle",
     "Exact: same type, every spec met", ("facts", "facts")),
    ("Exact", {"matched_terms": ["leather", "belt"], "missing_terms": ["brown"], "negation_hits": [],
               "negation_met": []},  # brown and the buckle not stated: unconfirmed, still Exact
     "same type; matches: belt", "some specs unstated; unstated: brown, no buckle",
     "Exact: same type, unstated specs taken as met", ("facts", "facts")),
    ("Exact", {"matched_terms": ["brown", "leather"], "missing_terms": ["belt"], "negation_hits": [],
               "negation_met": ["buckle"]},  # the head word not named (a synonym): the label's same type
     "same type; lacks: belt", "all specs met; met: brown, leather, no buckle",
     "Exact: same type, every spec met", ("label", "facts")),
    ("Exact", {**ALL, "negation_hits": ["buckle"], "negation_met": []},  # the excluded buckle stated: label wins
     "same type; matches: belt", "some specs unstated; unstated: no buckle",
     "Exact: same type, unstated specs taken as met", ("facts", "label")),
    ("Substitute", {**ALL, "negation_hits": ["buckle"], "negation_met": []},
     "same type; matches: belt", "some specs fail; fails: no buckle",
     "Substitute: could serve instead, but some specs fail", ("facts", "facts")),
    ("Substitute", {"matched_terms": ["leather", "belt"], "missing_terms": ["brown"], "negation_hits": [],
                    "negation_met": ["buckle"]},
     "same type; matches: belt", "some specs unstated; unstated: brown",
     "Substitute: could serve instead, but an unstated spec differs", ("facts", "facts")),
    ("Substitute", {**ALL, "negation_hits": [], "negation_met": ["buckle"]},  # nothing visible differs: the item
     "substitutable type; matches: belt", "all specs met; met: brown, leather, no buckle",
     "Substitute: a different item that could serve instead", ("label", "facts")),
    ("Complement", {"matched_terms": ["belt"], "missing_terms": ["brown", "leather"], "negation_hits": [],
                    "negation_met": []},
     "complementary type; matches: belt", "some specs unstated; unstated: brown, leather, no buckle",
     "Complement: used with belt, not one itself", ("label", "facts")),
    ("Irrelevant", {"matched_terms": ["belt"], "missing_terms": ["brown", "leather"], "negation_hits": ["buckle"],
                    "negation_met": []},
     "same type; matches: belt", "some specs fail; fails: no buckle; unstated: brown, leather",
     "Irrelevant: a central aspect of the query fails", ("facts", "facts")),
    ("Irrelevant", {"matched_terms": [], "missing_terms": ["brown", "leather", "belt"], "negation_hits": [],
                    "negation_met": []},
     "unrelated type; lacks: belt", "some specs unstated; unstated: brown, leather, no buckle",
     "Irrelevant: does not serve the query", ("label", "facts")),
]


@pytest.mark.parametrize("label, facts, type_step, attr_step, judge, sources", CASES)
def test_teacher_steps_by_hand(label, facts, type_step, attr_step, judge, sources):
    ex = {**Q, **facts, "label": label}
    assert teacher_steps(ex) == {"query": QUERY_STEP, "product": "Belts by Levi's, Brown", "type": type_step,
                                 "attr": attr_step, "judge": judge}
    assert verdict_sources(ex) == dict(zip(("type", "attr"), sources))


def test_teacher_step_texts_exact():
    s = teacher_steps(dict(BASE, label="Substitute"))
    assert s == {"query": "wants: belt; specs: leather; excludes: buckle", "product": "Belts by Levi's, Brown",
                 "type": "same type; matches: belt", "attr": "some specs fail; fails: no buckle",
                 "judge": "Substitute: could serve instead, but some specs fail"}
    u = teacher_steps(dict(BASE, label="Irrelevant", matched_terms=["leather"], missing_terms=["belt"]))
    assert u["type"] == "unrelated type; lacks: belt" and u["attr"] == "some specs fail; fails: no buckle"
    assert teacher_steps(dict(BASE, label="Substitute", query_terms=["belt", "men"], negated_terms=[],
                              negation_hits=[], missing_terms=["men"]))["query"] == "wants: belt; specs: men"
    guitar = teacher_steps({**BASE, "label": "Exact", "query_terms": ["guitar"], "negated_terms": [],
                            "matched_terms": ["guitar"], "negation_hits": []})
    assert (guitar["type"], guitar["attr"]) == ("same type; matches: guitar", "all specs met; no specs")


def test_teacher_on_real_train_split_is_short_and_consistent(tokenizer, smoke):
    df = load_splits(smoke)["train"]
    texts = [teacher_rationale(r) for r in df.to_dict("records")]
    parsed = [parse(t, ESCI) for t in texts]
    assert all(p.well_formed for p in parsed)
    assert [p.grade for p in parsed] == list(df["label"])
    n = [len(tokenizer(t).input_ids) for t in texts]
    assert 60 <= np.median(n) <= 110 and max(n) <= 160


def test_accept_filter():
    good = render_rationale(teacher_steps(dict(BASE, label="Exact")), "Exact")
    assert accept(good, "Exact", ESCI) == (True, "accepted")
    assert accept(good, "Substitute", ESCI) == (False, "wrong grade")
    assert accept("<grade>Exact</grade>", "Exact", ESCI) == (False, "malformed")
    assert accept("I think it is exact", "Exact", ESCI) == (False, "unparsable")


def test_llm_teacher_acceptance_report(monkeypatch, tokenizer):
    good = render_rationale(teacher_steps(dict(BASE, label="Exact")), "Exact")
    df = pd.DataFrame([dict(BASE, label="Exact", query="leather belt", title="Belt", bullets="", category=""),
                       dict(BASE, label="Substitute", query="leather belt", title="Belt", bullets="", category="")])
    fake = [[good, "junk"], ["junk", good]]  # 1st: accepted once; 2nd: only a wrong grade
    monkeypatch.setattr("she_lib.inference.generate", lambda *a, **k: fake)
    kept, rep = LLMTeacher(None, tokenizer, ESCI, config=LLMTeacherConfig(n_samples=2)).generate(df)
    assert list(kept["label"]) == ["Exact"] and kept.iloc[0]["rationale"] == good
    assert rep["sample_outcomes"] == {"accepted": 1, "unparsable": 2, "wrong grade": 1}
    assert rep["sample_acceptance_rate"] == 0.25 and rep["example_acceptance_rate"] == 0.5
    assert rep["example_acceptance_by_label"] == {"Exact": 1.0, "Substitute": 0.0}


def test_llm_teacher_runs_on_tiny_model(tiny_policy, smoke):
    df = load_splits(smoke)["train"].head(2)
    t = LLMTeacher(tiny_policy.model, tiny_policy.tokenizer, ESCI,
                   config=LLMTeacherConfig(n_samples=2, max_new_tokens=8))
    assert "The human grade is" in t.prompt(df.iloc[0])
    kept, rep = t.generate(df, progress=False)
    # 8 new tokens cannot hold a grade and five steps: no sample is a well-formed rationale, so none is accepted
    assert rep["samples"] == 4 and sum(rep["sample_outcomes"].values()) == 4
    assert set(rep["sample_outcomes"]) <= {"unparsable", "malformed", "wrong grade"}
    assert len(kept) == 0 and rep["example_acceptance_rate"] == 0.0 and list(kept.columns)[-1] == "rationale"
