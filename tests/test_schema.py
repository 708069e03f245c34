"""The stepwise format: rendering, parsing (never raises), character and token spans."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from she_lib.labels import ESCI
from she_lib.schema import (STEPS, build_messages, char_to_token_spans, parse, render_prompt,
                            render_rationale, token_spans)

STEP_TEXT = {"query": "wants: pants; specs: carhartt, men", "product": "Pants by Carhartt, Brown",
             "type": "same type; matches: pants", "attr": "some specs fail; fails: double",
             "judge": "Substitute: same type but some specs fail"}


def test_render_and_parse_grade_first_exact_spans():
    text = render_rationale(STEP_TEXT, "Substitute", "grade_first")
    assert text.startswith("<grade>Substitute</grade>\n<query>wants: pants")
    p = parse(text, ESCI)
    assert p.well_formed and p.grade == "Substitute" and p.order == "grade_first"
    assert [s for s in p.steps] == list(STEPS)
    assert p.grade_span == (0, len("<grade>Substitute</grade>"))
    q = p.steps["query"]
    assert text[q.span[0]:q.span[1]] == "<query>wants: pants; specs: carhartt, men</query>"
    assert p.steps["type"].verdict == "same type" and p.steps["attr"].verdict == "some specs fail"
    assert p.steps["query"].verdict is None and p.judge_grade == "Substitute"


def test_steps_first_order():
    text = render_rationale(STEP_TEXT, "Substitute", "steps_first")
    assert text.endswith("<grade>Substitute</grade>")
    p = parse(text, ESCI)
    assert p.well_formed and p.order == "steps_first"


@pytest.mark.parametrize("text, grade, error", [
    ("", None, "missing <grade>"),
    ("Exact", None, "missing <grade>"),
    ("<grade>Great</grade>", None, "unknown grade 'Great'"),
    ("<grade>Exact</grade>", "Exact", "missing steps"),
    ("<grade>exact.</grade>" + "".join(f"<{s}>x</{s}>" for s in STEPS), "Exact", "judgement"),
    ("<grade>Exact</grade><query>a</query><query>b</query>", "Exact", "repeated step <query>"),
    ("<grade>Exact</grade><product>a</product><query>b</query>", "Exact", "steps out of order"),
    ("hello <grade>Exact</grade>", "Exact", "text outside tags"),
    ("<grade>Exact</grade> trailing", "Exact", "text after the last tag"),
    ("<grade>Exact</grade><grade>Irrelevant</grade>", "Exact", "repeated <grade>"),
    ("<query>a</query><grade>Exact</grade><product>b</product>", "Exact", "in the middle"),
])
def test_malformed_outputs_are_reported_not_raised(text, grade, error):
    p = parse(text, ESCI)
    assert p.grade == grade
    assert not p.well_formed
    assert any(error in e for e in p.errors), p.errors


def test_judgement_contradiction():
    steps = dict(STEP_TEXT, judge="Exact: all fine")
    p = parse(render_rationale(steps, "Substitute"), ESCI)
    assert p.parsed and not p.well_formed and "judgement contradicts <grade>" in p.errors


def test_non_text_input():
    assert parse(None, ESCI).errors == ["not text: NoneType"]


def test_char_to_token_spans_hand_computed():
    offsets = [(0, 3), (3, 5), (5, 5), (5, 9), (9, 12)]  # one zero-width (special) token
    assert char_to_token_spans({"a": (0, 4), "b": (5, 12), "c": (20, 30)}, offsets) == {"a": (0, 2), "b": (3, 5)}


def test_token_spans_with_real_tokenizer(tokenizer):
    text = render_rationale(STEP_TEXT, "Substitute")
    p = parse(text, ESCI)
    spans = token_spans(p, text, tokenizer)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids[slice(*spans["grade"])]) == "<grade>Substitute</grade>"
    assert tokenizer.decode(ids[slice(*spans["attr"])]) == "<attr>some specs fail; fails: double</attr>"
    ordered = [spans[k] for k in ("grade", *STEPS)]
    assert all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:]))  # disjoint, in order


def test_prompt_through_chat_template(tokenizer):
    ex = {"query": "red mug", "title": "Mug", "brand": "", "colour": "Red", "category": "", "bullets": ""}
    msgs = build_messages(ex, ESCI)
    assert [m["role"] for m in msgs] == ["system", "user"] and "Brand" not in msgs[1]["content"]
    s = render_prompt(tokenizer, ex, ESCI)
    assert s.startswith("<|im_start|>system") and s.endswith("<|im_start|>assistant\n")
    assert "Colour: Red" in s


def test_render_rejects_missing_steps_and_bad_order():
    with pytest.raises(ValueError, match="misses steps"):
        render_rationale({"query": "x"}, "Exact")
    with pytest.raises(ValueError, match="unknown order"):
        render_rationale(STEP_TEXT, "Exact", "sideways")


# ---- property tests ----
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_parser_never_raises_on_arbitrary_text(text):
    p = parse(text, ESCI)
    assert p.grade is None or p.grade in ESCI.words
    for s in p.steps.values():
        assert 0 <= s.span[0] < s.span[1] <= len(text)


tag_soup = st.lists(st.sampled_from(["<grade>", "</grade>", "<query>", "</query>", "<type>", "</type>", "<attr>",
                                     "</attr>", "<judge>", "</judge>", "<product>", "</product>", "Exact",
                                     "Irrelevant", "same type", ";", " ", "\n", "<", ">"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(tag_soup)
def test_parser_never_raises_on_tag_soup(parts):
    p = parse("".join(parts), ESCI)
    assert p.well_formed == (p.parsed and not p.errors)


step_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).filter(
    lambda s: s.split() != [])


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({s: step_text for s in STEPS}), st.sampled_from(ESCI.words),
       st.sampled_from(["grade_first", "steps_first"]))
def test_render_parse_round_trip(steps, grade, order):
    steps = dict(steps, judge=f"{grade}: {steps['judge']}")
    text = render_rationale(steps, grade, order)
    p = parse(text, ESCI)
    assert p.grade == grade and p.order == order
    assert set(p.steps) == set(STEPS)
    for name, s in p.steps.items():
        assert text[s.span[0]:s.span[1]].startswith(f"<{name}>")
        assert s.text == " ".join(steps[name].replace("<", "(").replace(">", ")").split())
