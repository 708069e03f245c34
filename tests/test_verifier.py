"""Offline verifier (she_lib.verifier): one hand-worked case per rule, bad input, and the teacher on real data."""
import math

import numpy as np
import pytest

from she_lib.facts import example_facts
from she_lib.labels import ESCI, WANDS
from she_lib.schema import STEPS, render_rationale
from she_lib.verifier import (ATTR_TRUTH, CORRECT, INCORRECT, TYPE_TRUTH, UNKNOWN, StepTruth, VerifierConfig,
                              expected_attr_verdict, facts_attr_verdict, step_accuracy, step_status, verify)

RECORD = {"example_id": "q1:p1", "query": "leather belt without buckle", "title": "Levi's Men's Leather Belt, Brown",
          "brand": "Levi's", "colour": "Brown", "category": "Clothing > Men > Belts",
          "bullets": "Genuine leather with a metal buckle", "description": ""}
# facts by hand: query terms [leather, belt], negated [buckle]; the product has leather and belt; its bullets
# mention the excluded buckle (a negation hit) and never state it absent
FACTS = {"query_terms": ["leather", "belt"], "negated_terms": ["buckle"], "product_type": "Belts",
         "matched_terms": ["leather", "belt"], "missing_terms": [], "negation_hits": ["buckle"], "negation_met": []}
# the facts say "some specs fail" (no buckle fails); the label Exact rules that out, so the verdict is the nearest it
# allows, "some specs unstated", with the buckle listed as unstated (the listing never states it absent)
ATTR_OK = "some specs unstated; unstated: no buckle"
STEPS_OK = {"query": "wants: belt; specs: leather; excludes: buckle", "product": "Belts by Levi's, Brown",
            "type": "same type; matches: leather, belt", "attr": ATTR_OK,
            "judge": "Exact: same type, unstated specs taken as met"}


def ex(label="Exact", **kw):
    return {**RECORD, **FACTS, "label": label, **kw}


def rat(grade="Exact", order="grade_first", **steps):
    return render_rationale({**STEPS_OK, **steps}, grade, order)


def truth(label, text, step):
    return verify(ex(label), text).steps[step]


def test_facts_by_hand_are_the_facts_module():
    assert {k: example_facts(RECORD)[k] for k in FACTS} == FACTS


def test_a_right_rationale_is_correct_everywhere():
    v = verify(ex(), rat())
    assert v.truths() == [CORRECT] * 5 and v.grade.truth == CORRECT and not v.unparsable
    assert v.status == {s: "ok" for s in STEPS}
    assert np.array_equal(v.vector(), np.ones(5))


# ------------------------------------------------------------------------------------------ grade and judge
def test_grade_rule():
    assert verify(ex(), rat()).grade == StepTruth(CORRECT, "grade Exact is the label")
    assert verify(ex("Substitute"), rat()).grade.truth == INCORRECT
    assert "label is Substitute" in verify(ex("Substitute"), rat()).grade.reason
    assert verify(ex(), rat().replace("<grade>Exact</grade>", "<grade>Great</grade>")).grade.truth == INCORRECT
    no_grade = rat().replace("<grade>Exact</grade>\n", "")
    assert verify(ex(), no_grade).grade.reason == "no readable grade"
    assert verify(ex(), no_grade).steps["query"].truth == CORRECT


def test_judge_rule():
    assert truth("Exact", rat(), "judge").truth == CORRECT
    wrong = truth("Exact", rat(judge="Substitute: could serve instead"), "judge")
    assert wrong.truth == INCORRECT and wrong.reason == "the judgement states Substitute, the label is Exact"
    assert truth("Exact", rat(judge="looks like a good match"), "judge") == \
        StepTruth(INCORRECT, "the judgement states no grade")
    # judged against the human label, not against <grade>: a wrong grade with a right judgement
    assert truth("Exact", rat(grade="Substitute"), "judge").truth == CORRECT


# ------------------------------------------------------------------------------------------ product type
C, X, U = CORRECT, INCORRECT, UNKNOWN
TYPE_TABLE = [  # label, same, substitutable, complementary, unrelated (DESIGN.md, by hand)
    ("Exact", C, X, X, X), ("Substitute", C, C, X, X), ("Complement", X, X, C, X), ("Irrelevant", U, U, X, C)]


@pytest.mark.parametrize("label, same, subst, compl, unrel", TYPE_TABLE)
def test_type_verdict_table(label, same, subst, compl, unrel):
    for verdict, want in zip(("same type", "substitutable type", "complementary type", "unrelated type"),
                             (same, subst, compl, unrel)):
        got = truth(label, rat(type=f"{verdict}; matches: belt"), "type")
        assert got.truth == want, (label, verdict, got)
        assert TYPE_TRUTH[label][verdict] == want
    assert truth(label, rat(type="same type; matches: belt"), "type").reason.startswith("'same type'")


def test_type_match_claims_are_checked_against_the_record():
    bad = truth("Exact", rat(type="same type; matches: leather, silk"), "type")
    assert bad.truth == INCORRECT and bad.reason == "claims a match on 'silk', which the product record lacks"
    assert truth("Exact", rat(type="same type; matches: none"), "type").truth == CORRECT
    assert truth("Substitute", rat(type="substitutable type; lacks: suede"), "type").truth == CORRECT
    assert truth("Substitute", rat(type="substitutable type; lacks: belt"), "type") == \
        StepTruth(INCORRECT, "claims the product lacks 'belt', but its record has it")
    assert truth("Exact", rat(type="same type; matches: belts, genuine"), "type").truth == CORRECT  # stems; bullets
    # an undecided verdict stays unknown with true claims, but a false claim makes it incorrect
    assert truth("Irrelevant", rat(type="same type; matches: belt"), "type").truth == UNKNOWN
    assert truth("Irrelevant", rat(type="same type; matches: silk"), "type").truth == INCORRECT
    # a verdict outside the closed vocabulary
    free = truth("Exact", rat(type="pretty much the same thing; matches: belt"), "type")
    assert free == StepTruth(UNKNOWN, "no type verdict from the closed vocabulary")
    assert truth("Exact", rat(type="pretty much the same; matches: silk"), "type").truth == INCORRECT
    both = truth("Exact", rat(type="unrelated type; matches: silk"), "type")
    assert both.truth == INCORRECT and "silk" in both.reason and "contradicts the label Exact" in both.reason


# ------------------------------------------------------------------------------------------ attributes
ATTR_LABEL_ROWS = [  # label, all specs met, some specs unstated, some specs fail, not decisive: the label alone
    ("Exact", C, C, X, X), ("Substitute", U, C, C, X), ("Complement", U, U, U, U), ("Irrelevant", U, U, U, U)]
ATTR_TABLE = [  # the same verdicts on this example, whose facts say "some specs fail"
    ("Exact", X, C, X, X),  # the label rules "fail" out: the nearest it allows is "unstated"
    ("Substitute", X, X, C, X), ("Complement", X, X, C, U), ("Irrelevant", X, X, C, U)]
ATTR_VERDICTS = ("all specs met", "some specs unstated", "some specs fail", "not decisive")


@pytest.mark.parametrize("label, met, unstated, fail, not_decisive", ATTR_TABLE)
def test_attr_verdict_table(label, met, unstated, fail, not_decisive):
    for verdict, want in zip(ATTR_VERDICTS, (met, unstated, fail, not_decisive)):
        assert truth(label, rat(attr=verdict), "attr").truth == want, (label, verdict)
    row = next(r for r in ATTR_LABEL_ROWS if r[0] == label)
    assert [ATTR_TRUTH[label][v] for v in ATTR_VERDICTS] == list(row[1:])


def test_attr_verdict_reasons():
    assert truth("Exact", rat(), "attr") == StepTruth(
        CORRECT, "'some specs unstated' is what the label Exact allows nearest to the facts' 'some specs fail'")
    assert truth("Exact", rat(attr="all specs met"), "attr") == StepTruth(
        INCORRECT, "the facts say 'some specs unstated' (the label rules out 'some specs fail')")
    assert truth("Substitute", rat(attr="some specs fail; fails: no buckle"), "attr") == StepTruth(
        CORRECT, "'some specs fail' follows from the facts and fits the label Substitute")
    assert truth("Substitute", rat(attr="all specs met"), "attr") == StepTruth(
        INCORRECT, "the facts say 'some specs fail'")
    assert truth("Exact", rat(attr="some specs fail"), "attr") == StepTruth(
        INCORRECT, "'some specs fail' contradicts the label Exact")


# the same query against listings that confirm, leave unstated, or contradict the exclusion (facts by hand)
LISTINGS = [  # bullets, negation_hits, negation_met, facts verdict
    ("Genuine leather, no buckle", [], ["buckle"], "all specs met"),
    ("Genuine leather", [], [], "some specs unstated"),
    ("Genuine leather with a metal buckle", ["buckle"], [], "some specs fail"),
]
EXPECTED = {  # (facts verdict, label) -> the verdict to write, by hand from ATTR_LABEL_ROWS
    ("all specs met", "Exact"): "all specs met", ("all specs met", "Substitute"): "all specs met",
    ("all specs met", "Irrelevant"): "all specs met",
    ("some specs unstated", "Exact"): "some specs unstated", ("some specs unstated", "Substitute"): "some specs unstated",
    ("some specs unstated", "Complement"): "some specs unstated",
    ("some specs fail", "Exact"): "some specs unstated", ("some specs fail", "Substitute"): "some specs fail",
    ("some specs fail", "Irrelevant"): "some specs fail",
}


@pytest.mark.parametrize("bullets, hits, met, verdict", LISTINGS)
def test_attr_verdict_follows_the_facts(bullets, hits, met, verdict):
    record = {**RECORD, "bullets": bullets}
    f = example_facts(record)
    assert (f["negation_hits"], f["negation_met"], f["matched_terms"]) == (hits, met, ["leather", "belt"])
    assert facts_attr_verdict(f) == verdict
    for (facts, label), want in EXPECTED.items():
        if facts != verdict:
            continue
        assert expected_attr_verdict(f, label) == want
        for v in ATTR_VERDICTS[:3]:
            got = verify({**record, "label": label}, rat(label, attr=v)).steps["attr"].truth
            assert got == (CORRECT if v == want else INCORRECT), (bullets, label, v)


def test_attr_fail_claims_are_checked_against_the_record():
    bad = truth("Substitute", rat(attr="some specs fail; fails: leather"), "attr")
    assert bad == StepTruth(INCORRECT, "claims 'leather' fails, but the product has it")
    assert truth("Substitute", rat(attr="some specs fail; fails: buckle"), "attr").truth == CORRECT  # negation hit
    assert truth("Substitute", rat(attr="some specs fail; fails: a detail the listing does not state"),
                 "attr").truth == CORRECT  # not query terms: nothing to check
    assert truth("Irrelevant", rat(attr="some specs fail; fails: belts"), "attr").truth == INCORRECT  # stem of belt
    assert truth("Exact", rat(attr="everything fine"), "attr").truth == UNKNOWN
    # met / unstated lists: a query term must be in the named category
    assert truth("Exact", rat(attr="some specs unstated; unstated: leather"), "attr") == \
        StepTruth(INCORRECT, "claims 'leather' is unstated, but the listing states it")
    assert truth("Substitute", rat(attr="some specs fail; fails: no buckle; met: leather, no buckle"), "attr") == \
        StepTruth(INCORRECT, "claims 'buckle' is met, which the listing does not state")
    assert truth("Substitute", rat(attr="some specs fail; fails: no buckle; met: belts, leather"), "attr").truth == \
        CORRECT
    missing = ex("Substitute", query="red leather belt without buckle", query_terms=["red", "leather", "belt"],
                 missing_terms=["red"])
    assert verify(missing, rat(attr="some specs fail; fails: red, buckle")).steps["attr"] == \
        StepTruth(INCORRECT, "claims 'red' fails, but the listing does not state it")  # unstated, not contradicted


# ------------------------------------------------------------------------------------------ product and query
def test_product_claims_must_be_in_the_product_fields():
    assert truth("Exact", rat(product="Belts by Levi's, Brown"), "product").truth == CORRECT
    bad = truth("Exact", rat(product="Belts by Nike, Brown"), "product")
    assert bad == StepTruth(INCORRECT, "'nike' is not in the product's title/brand/colour/category")
    assert truth("Exact", rat(product="Belts, Black"), "product").truth == INCORRECT
    assert truth("Exact", rat(product="Genuine belt"), "product").truth == INCORRECT  # bullets are not product fields
    assert truth("Exact", rat(product="Clothing belts for men"), "product").truth == CORRECT  # category, stop word
    assert truth("Exact", rat(product="unknown item"), "product") == StepTruth(UNKNOWN, "states nothing checkable")


def test_query_understanding_is_checked_against_the_query():
    assert truth("Exact", rat(query="wants: belts; specs: leather"), "query").truth == CORRECT
    assert truth("Exact", rat(query="wants: belt; specs: suede"), "query").reason == "'suede' is not in the query"
    assert truth("Exact", rat(query="wants: buckle"), "query").reason == "'buckle' is excluded by the query"
    assert truth("Exact", rat(query="wants: belt; excludes: leather"), "query").reason == \
        "'leather' is not excluded by the query"
    assert truth("Exact", rat(query="wants: unclear"), "query").truth == UNKNOWN


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("text", [None, 42, "", "Exact, I think.", "<answer>Exact</answer>"])
def test_unparsable_input_is_all_unknown(text):
    v = verify(ex(), text)
    assert v.unparsable and v.truths() == [UNKNOWN] * 5 and v.grade.truth == INCORRECT
    assert v.status == {s: "missing" for s in STEPS} and all(math.isnan(x) for x in v.vector())


def test_missing_steps():
    text = rat().replace(f"<attr>{ATTR_OK}</attr>\n", "")
    v = verify(ex(), text)
    assert v.status["attr"] == "missing" and v.steps["attr"] == StepTruth(UNKNOWN, "missing")
    assert [v.steps[s].truth for s in STEPS if s != "attr"] == [CORRECT] * 4 and not v.unparsable
    only_grade = verify(ex(), "<grade>Exact</grade>")
    assert not only_grade.unparsable and only_grade.grade.truth == CORRECT
    assert set(only_grade.status.values()) == {"missing"}


def test_repeated_step_is_judged_on_its_first_occurrence():
    text = rat().replace(f"<attr>{ATTR_OK}</attr>", f"<attr>{ATTR_OK}</attr>\n<attr>some specs fail</attr>")
    v = verify(ex(), text)
    assert v.status == {**{s: "ok" for s in STEPS}, "attr": "repeated"} and v.steps["attr"].truth == CORRECT
    assert step_status(v.parsed) == {"query": "ok", "product": "ok", "type": "ok", "attr": "repeated", "judge": "ok"}


def test_other_format_faults_are_still_judged():
    steps_first = verify(ex(), rat(order="steps_first"))
    assert steps_first.truths() == [CORRECT] * 5
    shuffled = "\n".join(reversed(rat().split("\n")))  # steps out of order, grade last
    assert verify(ex(), shuffled).truths() == [CORRECT] * 5 and not verify(ex(), shuffled).parsed.well_formed
    assert verify(ex(), rat() + "\nthanks!").truths() == [CORRECT] * 5


def test_facts_are_computed_when_absent_and_config_is_used():
    assert verify(dict(RECORD, label="Exact"), rat()).truths() == [CORRECT] * 5  # as with FACTS given by hand
    strict = VerifierConfig(product_fields=("brand", "colour"))  # the category no longer backs "Belts"
    assert verify(ex(), rat(), config=strict).steps["product"].truth == INCORRECT


def test_wands_partial():
    wands = ex("Partial")
    text = render_rationale({**STEPS_OK, "attr": "some specs fail", "judge": "Partial: partly"}, "Partial")
    v = verify(wands, text, WANDS)
    assert v.truths() == [CORRECT] * 5 and v.grade.truth == CORRECT
    assert verify(wands, text.replace("some specs fail", "all specs met"), "wands").steps["attr"].truth == INCORRECT


def test_teacher_rationales_are_never_incorrect_on_real_data(smoke):
    from she_lib.data import prepare_splits
    from she_lib.rationales import teacher_rationale

    splits = prepare_splits(smoke, write=False)[0]
    rows = [r for s in ("train", "validation") for r in splits[s].to_dict("records")]
    truths = [verify(r, teacher_rationale(r), ESCI) for r in rows]
    assert all(INCORRECT not in v.truths() and v.grade.truth == CORRECT for v in truths)
    coverage = np.mean([t != UNKNOWN for v in truths for t in v.truths()])
    assert 0.9 < coverage < 1  # undecided: Complement / Irrelevant attributes, some Irrelevant types


def test_teacher_rationales_are_correct_on_real_rows_and_a_corrupted_verdict_is_flagged(smoke):
    from she_lib.data import prepare_splits
    from she_lib.rationales import teacher_steps

    rows = prepare_splits(smoke, write=False)[0]["train"].to_dict("records")
    undecided = 0
    for r in rows:
        steps = teacher_steps(r)
        v = verify(r, render_rationale(steps, r["label"]), ESCI)
        # every step correct, but the type of an Irrelevant pair that names the query's item (undecided by the label)
        irr_same = r["label"] == "Irrelevant" and steps["type"].startswith("same type")
        assert {s: v.steps[s].truth for s in STEPS} == {**{s: CORRECT for s in STEPS},
                                                        **({"type": UNKNOWN} if irr_same else {})}, steps
        undecided += irr_same
        verdict, evidence = steps["attr"].split(";", 1)
        for other in {"all specs met", "some specs unstated", "some specs fail"} - {verdict}:
            bad = render_rationale({**steps, "attr": f"{other};{evidence}"}, r["label"])
            assert verify(r, bad, ESCI).steps["attr"].truth == INCORRECT, (other, steps)
    assert len(rows) > 100 and undecided < len(rows) / 10


def test_step_accuracy_of_decoded_rationales():
    """Three rationales of an Exact pair: right (5 of 5 correct), a wrong type verdict and judgement (3 of 5), junk."""
    wrong = rat(type="unrelated type; matches: belt", judge="Irrelevant: unrelated")
    out = step_accuracy([ex(), ex(), ex()], [rat(), wrong, "no tags here"])
    assert out["steps_decided"] == 10 and out["step_accuracy"] == pytest.approx(8 / 10)
    assert out["step_coverage"] == 1.0 and out["unparsable"] == 1
    assert out["step_accuracy/type"] == 0.5 and out["step_accuracy/judge"] == 0.5 and out["step_accuracy/query"] == 1.0
    # a missing step is not decided; nothing parsable gives None
    missing = render_rationale({**STEPS_OK}, "Exact").replace(f"<attr>{ATTR_OK}</attr>\n", "")
    assert step_accuracy([ex()], [missing])["steps_decided"] == 4
    assert step_accuracy([ex()], [None])["step_accuracy"] is None
