"""Offline teacher (consistent with the ESCI definitions) and the LLM teacher's rejection filter."""
import numpy as np
import pandas as pd
import pytest

from she_lib import rationales
from she_lib.data import load_splits
from she_lib.labels import ESCI
from she_lib.rationales import LLMTeacher, LLMTeacherConfig, accept, teacher_rationale, teacher_steps
from she_lib.schema import parse, render_rationale

BASE = {"query_terms": ["leather", "belt"], "negated_terms": ["buckle"], "product_type": "Belts",
        "brand": "Levi's", "colour": "Brown", "matched_terms": ["leather", "belt"], "missing_terms": [],
        "negation_hits": ["buckle"]}


@pytest.mark.parametrize("label, type_verdict, attr_verdict", [
    ("Exact", "same type", "all specs met"),
    ("Substitute", "same type", "some specs fail"),
    ("Complement", "complementary type", "not decisive"),
    ("Irrelevant", "same type", "some specs fail"),  # head word matches: a central aspect fails
])
def test_teacher_verdicts_follow_esci_definitions(label, type_verdict, attr_verdict):
    p = parse(teacher_rationale(dict(BASE, label=label)), ESCI)
    assert p.well_formed and p.grade == label and p.judge_grade == label
    assert p.steps["type"].verdict == type_verdict and p.steps["attr"].verdict == attr_verdict


def test_teacher_step_texts_exact():
    s = teacher_steps(dict(BASE, label="Substitute"))
    assert s == {"query": "wants: belt; specs: leather; excludes: buckle", "product": "Belts by Levi's, Brown",
                 "type": "same type; matches: leather, belt", "attr": "some specs fail; fails: buckle",
                 "judge": "Substitute: could serve instead, but some specs fail"}
    u = teacher_steps(dict(BASE, label="Irrelevant", matched_terms=["leather"], missing_terms=["belt"]))
    assert u["type"] == "unrelated type; matches: leather" and u["attr"] == "not decisive"
    assert teacher_steps(dict(BASE, label="Substitute", query_terms=["belt", "men"], negated_terms=[],
                              negation_hits=[], missing_terms=["men"]))["query"] == "wants: belt; specs: men"


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
    assert rep["samples"] == 4 and len(kept) == round(rep["example_acceptance_rate"] * 2)
