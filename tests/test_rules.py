"""Rule-aware reward shaping (she_lib.rules): exact numbers per rule on hand-written rationales, rule-breaking
rationales, bad output, the hard gate, the TRL callable, the violation rate, and teacher rationales on real data."""
import random

import pytest

from she_lib.labels import ESCI, WANDS
from she_lib.rules import (BROKEN, COMPONENTS, CONSISTENT, RULES, UNVERIFIABLE, RuleReward, RuleRewardConfig,
                           completion_text, rule_checks, rule_rewards, rule_violation_rate)
from she_lib.schema import render_rationale

# the verifier tests' record; facts left out on purpose (rules compute them, as the verifier does)
RECORD = {"example_id": "q1:p1", "query": "leather belt without buckle", "title": "Levi's Men's Leather Belt, Brown",
          "brand": "Levi's", "colour": "Brown", "category": "Clothing > Men > Belts",
          "bullets": "Genuine leather with a metal buckle", "description": ""}
# the bullets state the excluded buckle: the facts say "some specs fail", which Exact rules out, so the attr verdict
# for <grade>Exact is the nearest one Exact allows (verifier.expected_attr_verdict), with the buckle unstated
ATTR_OK = "some specs unstated; unstated: no buckle"
STEPS_OK = {"query": "wants: belt; specs: leather; excludes: buckle", "product": "Belts by Levi's, Brown",
            "type": "same type; matches: leather, belt", "attr": ATTR_OK,
            "judge": "Exact: same type, unstated specs taken as met"}
SUBST = {"attr": "some specs fail; fails: buckle", "judge": "Substitute: could serve instead, but some specs fail"}
W = RuleRewardConfig()  # w_format 0.1, w_label 1, w_distance 0.2, w_k 0.2
FULL = 0.1 + 1.0 + 0.2 + 4 * 0.2  # 2.1
OPEN_GATE = RuleRewardConfig(hard_gate=False)
STRICT_GATE = RuleRewardConfig(gate_scope="all")


def ex(label="Exact", **kw):
    return {**RECORD, "label": label, **kw}


def rat(grade="Exact", order="grade_first", **steps):
    return render_rationale({**STEPS_OK, **steps}, grade, order)


def comps(text, label="Exact", config=W, scale=ESCI):
    return rule_rewards(ex(label), text, scale, config)


def status(text, label="Exact", config=W):
    return {k: c.status for k, c in rule_checks(ex(label), text, "esci", config).rules.items()}


def approx(d):
    return {k: pytest.approx(v) for k, v in d.items()}


ALL_OK = {r: CONSISTENT for r in RULES}


# ------------------------------------------------------------------------------------------ a right rationale
def test_right_rationale_earns_every_component():
    c = comps(rat())
    assert c == approx({"format": 1, "label": 1, "distance": 1, "type": 1, "attr": 1, "judge": 1, "claims": 1,
                        "gate": 1, "parsable": 1, "violation": 0, "total": FULL})
    assert W.max_total() == pytest.approx(FULL) and set(COMPONENTS) < set(c)
    assert comps(rat(order="steps_first")) == c  # both reasoning orders
    assert status(rat()) == ALL_OK


def test_weights_are_config_fields():
    cfg = RuleRewardConfig(w_format=0.5, w_label=2.0, w_distance=0.0, w_type=1.0, w_attr=0.0, w_judge=0.3,
                           w_claims=0.7)
    assert comps(rat(), config=cfg)["total"] == pytest.approx(0.5 + 2.0 + 1.0 + 0.3 + 0.7)
    assert comps(rat(type="unrelated type; matches: belt"), config=cfg)["total"] == pytest.approx(3.5)
    with pytest.raises(ValueError):
        RuleRewardConfig(gate_scope="some")
    with pytest.raises(ValueError):
        RuleRewardConfig(claim_steps=("judge",))


# ------------------------------------------------------------------------------------------ grade and distance
@pytest.mark.parametrize("grade, distance", [("Exact", 1.0), ("Substitute", 2 / 3), ("Complement", 1 / 3),
                                             ("Irrelevant", 0.0)])
def test_grade_distance_on_the_ordinal_scale(grade, distance):
    c = comps(rat(grade=grade, judge=f"{grade}: whatever"), config=OPEN_GATE)
    assert c["distance"] == pytest.approx(distance) and c["label"] == float(grade == "Exact")
    # gold Irrelevant, grade Exact: the far end of the scale; symmetric
    assert comps(rat(grade=grade, judge=f"{grade}: x"), "Irrelevant")["distance"] == pytest.approx(1 - distance)


def test_wands_distance_and_partial():
    text = render_rationale({**STEPS_OK, "attr": "some specs fail", "judge": "Partial: partly"}, "Partial")
    c = rule_rewards(ex("Exact"), text, WANDS, OPEN_GATE)
    assert c["distance"] == pytest.approx(0.5) and c["label"] == 0
    assert {r: c[r] for r in RULES} == {r: 1.0 for r in RULES}  # WANDS's Partial row of the verifier's tables
    assert rule_rewards(ex("Partial"), text, WANDS)["total"] == pytest.approx(FULL)
    assert rule_rewards(ex("E"), rat(), ESCI)["label"] == 1  # raw labels are mapped by the scale


# ------------------------------------------------------------------------------------------ rule-breaking rationales
def test_different_product_type_with_exact_breaks_the_type_rule():
    text = rat(type="unrelated type; matches: belt")
    assert status(text) == {**ALL_OK, "type": BROKEN}
    check = rule_checks(ex(), text).rules["type"]
    assert check.reason == "'unrelated type' contradicts the grade Exact"
    c = comps(text)
    assert (c["type"], c["gate"], c["violation"], c["total"]) == (0, 1, 1, pytest.approx(FULL - 0.2))
    for verdict in ("substitutable type", "complementary type"):
        assert status(rat(type=f"{verdict}; matches: belt"))["type"] == BROKEN
    # the same verdicts are allowed by other grades (the ESCI definitions)
    assert status(rat("Substitute", type="substitutable type; matches: belt", **SUBST))["type"] == CONSISTENT
    assert status(rat("Irrelevant", type="same type; matches: belt", judge="Irrelevant: x"))["type"] == CONSISTENT
    assert status(rat("Irrelevant", type="complementary type; matches: belt", judge="Irrelevant: x"))["type"] == BROKEN
    assert status(rat("Complement", type="same type; matches: belt", judge="Complement: x"))["type"] == BROKEN


def test_failed_spec_with_exact_breaks_the_attr_rule():
    text = rat(attr="some specs fail; fails: buckle")  # a true claim (the bullets mention the excluded buckle)
    assert status(text) == {**ALL_OK, "attr": BROKEN}
    assert comps(text)["total"] == pytest.approx(FULL - 0.2)
    assert status(rat(attr="not decisive"))["attr"] == BROKEN
    assert status(rat("Substitute", **{**SUBST, "attr": "all specs met"}))["attr"] == BROKEN
    assert status(rat("Complement", attr="some specs fail", judge="Complement: x"))["attr"] == CONSISTENT
    assert status(rat("Substitute", **SUBST)) == ALL_OK


def test_attr_verdict_the_facts_contradict_breaks_the_attr_rule():
    text = rat(attr="all specs met")  # Exact: the facts give "some specs unstated" (the stated buckle, see ATTR_OK)
    assert status(text) == {**ALL_OK, "attr": BROKEN}
    assert rule_checks(ex(), text).rules["attr"].reason == \
        "'all specs met' contradicts the facts, which give 'some specs unstated' for Exact"
    assert status(rat("Complement", attr="all specs met", judge="Complement: x"))["attr"] == BROKEN  # facts: fail
    unstated = ex(bullets="Genuine leather")  # the buckle neither stated nor stated absent
    assert rule_checks(unstated, rat()).rules["attr"].status == CONSISTENT
    assert rule_checks(unstated, rat(attr="all specs met")).rules["attr"].status == BROKEN
    met = ex(bullets="Genuine leather, no buckle")  # stated absent: every spec met
    assert rule_checks(met, rat(attr="all specs met; met: leather, no buckle")).rules["attr"].status == CONSISTENT
    assert rule_checks(met, rat()).rules["attr"].status == BROKEN


@pytest.mark.parametrize("steps, reason", [
    ({"product": "Belts by Nike, Brown"}, "product: 'nike' is not in the product's title/brand/colour/category"),
    ({"product": "Belts by Levi's, Black"}, "product: 'black' is not in the product's title/brand/colour/category"),
    ({"type": "same type; matches: leather, silk"}, "type: claims a match on 'silk', which the product record lacks"),
    ({"query": "wants: belt; specs: suede"}, "query: 'suede' is not in the query"),
])
def test_claims_the_record_contradicts_break_the_claims_rule(steps, reason):
    text = rat(**steps)
    assert status(text) == {**ALL_OK, "claims": BROKEN}
    assert rule_checks(ex(), text).rules["claims"].reason == reason
    assert comps(text)["total"] == pytest.approx(FULL - 0.2)


def test_attr_fail_claim_on_a_term_the_product_has():
    text = rat("Substitute", **{**SUBST, "attr": "some specs fail; fails: leather"})
    assert status(text, "Substitute") == {**ALL_OK, "claims": BROKEN}
    both = rat(attr="some specs fail; fails: leather")  # Exact + a failed spec the product has: two rules
    assert status(both) == {**ALL_OK, "attr": BROKEN, "claims": BROKEN}
    assert comps(both)["total"] == pytest.approx(FULL - 0.4)


def test_judgement_contradicting_the_grade():
    text = rat(judge="Substitute: could serve instead")
    assert status(text) == {**ALL_OK, "judge": BROKEN}
    assert rule_checks(ex(), text).rules["judge"].reason == "the judgement states Substitute, <grade> is Exact"
    # the parser calls a contradicting judgement a format fault, so the gate closes
    c = comps(text)
    assert (c["format"], c["label"], c["judge"], c["gate"]) == (0, 1, 0, 0)
    assert c["total"] == pytest.approx(1.0 + 0.2)  # w_label + w_distance; rule terms zeroed
    assert comps(text, config=STRICT_GATE)["total"] == 0.0  # w_format * 0
    assert comps(text, config=OPEN_GATE)["total"] == pytest.approx(1.0 + 0.2 + 3 * 0.2)


def test_rules_never_read_the_human_label():
    for text in (rat(), rat(type="unrelated type; matches: belt"), rat(product="Belts by Nike"),
                 rat("Substitute", **SUBST), rat(judge="Irrelevant: no")):
        got = {lab: {r: c.status for r, c in rule_checks(ex(lab), text).rules.items()}
               for lab in ESCI.words}
        assert len({tuple(v.values()) for v in got.values()}) == 1, text


# ------------------------------------------------------------------------------------------ unverifiable rules
def test_verdict_outside_the_vocabulary_is_unverifiable():
    text = rat(type="pretty much the same thing; matches: belt", attr="looks fine")
    assert status(text) == {**ALL_OK, "type": UNVERIFIABLE, "attr": UNVERIFIABLE}
    c = comps(text)  # still well formed: the parser does not check verdicts
    assert (c["format"], c["type"], c["attr"], c["violation"]) == (1, 0, 0, 0)
    assert c["total"] == pytest.approx(FULL - 0.4)
    half = RuleRewardConfig(unverifiable_reward=0.5)
    assert comps(text, config=half)["total"] == pytest.approx(FULL - 0.2)


def test_missing_steps_and_nothing_checkable():
    no_attr = rat().replace(f"<attr>{ATTR_OK}</attr>\n", "")
    assert status(no_attr) == {**ALL_OK, "attr": UNVERIFIABLE}
    assert rule_checks(ex(), no_attr).rules["attr"].reason == "no <attr> step"
    c = comps(no_attr)
    assert (c["format"], c["gate"], c["total"]) == (0, 0, pytest.approx(1.2))
    assert comps(no_attr, config=OPEN_GATE)["total"] == pytest.approx(1.0 + 0.2 + 3 * 0.2)
    vague = rat(query="wants: unclear", product="unknown item", type="same type; matches: none")
    assert status(vague) == {**ALL_OK, "claims": UNVERIFIABLE}
    assert comps(vague)["total"] == pytest.approx(FULL - 0.2)
    mute = rat(judge="looks like a good match")
    assert status(mute) == {**ALL_OK, "judge": UNVERIFIABLE}
    only_grade = comps("<grade>Exact</grade>")
    assert only_grade == approx({"format": 0, "label": 1, "distance": 1, "type": 0, "attr": 0, "judge": 0,
                                 "claims": 0, "gate": 0, "parsable": 1, "violation": 0, "total": 1.2})
    assert set(status("<grade>Exact</grade>").values()) == {UNVERIFIABLE}


def test_no_grade_leaves_the_grade_rules_unverifiable():
    text = rat().replace("<grade>Exact</grade>\n", "")
    assert status(text) == {"type": UNVERIFIABLE, "attr": UNVERIFIABLE, "judge": UNVERIFIABLE, "claims": CONSISTENT}
    c = comps(text)
    assert (c["parsable"], c["format"], c["label"], c["distance"], c["total"]) == (0, 0, 0, 0, 0.0)
    assert comps(text, config=OPEN_GATE)["total"] == pytest.approx(0.2)  # the claims rule alone


# ------------------------------------------------------------------------------------------ unparsable
@pytest.mark.parametrize("text", [None, 42, "", "Exact, I think.", "<answer>Exact</answer>", [], [{"role": "x"}],
                                  "<grade>Great</grade>"])
def test_unparsable_output_has_a_defined_reward(text):
    for cfg in (W, STRICT_GATE, OPEN_GATE):
        c = comps(text, config=cfg)
        assert c == approx({"format": 0, "label": 0, "distance": 0, "type": 0, "attr": 0, "judge": 0,
                            "claims": 0, "gate": 0, "parsable": 0, "violation": 0, "total": 0})
    assert set(status(text).values()) == {UNVERIFIABLE}


# ------------------------------------------------------------------------------------------ hard gate
WRONG = rat("Substitute", **SUBST)  # well formed, internally consistent, grade Substitute; gold Exact


def test_hard_gate_zeroes_the_rule_rewards_of_a_wrong_grade():
    c = comps(WRONG)
    assert {r: c[r] for r in RULES} == {r: 1.0 for r in RULES}  # components are logged before the gate
    assert (c["format"], c["label"], c["gate"]) == (1, 0, 0) and c["distance"] == pytest.approx(2 / 3)
    assert c["total"] == pytest.approx(0.1 + 0.2 * 2 / 3)  # gate "rules": format + distance
    assert comps(WRONG, config=STRICT_GATE)["total"] == pytest.approx(0.1)  # gate "all": format only
    assert comps(WRONG, config=OPEN_GATE)["total"] == pytest.approx(0.1 + 0.2 * 2 / 3 + 0.8)
    # fluent or rule-breaking, reasoning behind a wrong grade earns the same under the gate
    broken = rat("Substitute", **{**SUBST, "type": "unrelated type; matches: silk"})
    assert status(broken, "Exact") == {**ALL_OK, "type": BROKEN, "claims": BROKEN}
    assert comps(broken)["total"] == pytest.approx(c["total"])
    assert comps(broken, config=OPEN_GATE)["total"] == pytest.approx(c["total"] + 0.4)
    # a right grade opens it: the same rationale for a Substitute pair earns everything
    assert comps(WRONG, "Substitute")["total"] == pytest.approx(FULL)


def test_gate_with_zero_rule_weights_is_the_outcome_reward():
    """With every rule weight 0 the total is OutcomeReward's w_label * [grade == gold] + w_format * [well formed]
    (she_lib.rewards), worked out by hand per rationale: (its grade, well formed)."""
    cfg = RuleRewardConfig(w_distance=0, w_type=0, w_attr=0, w_judge=0, w_claims=0)
    cases = [(rat(), "Exact", 1),  # right rationale: Exact, well formed
             (WRONG, "Substitute", 1),  # consistent Substitute rationale: well formed
             (rat(judge="Substitute: x"), "Exact", 0),  # judgement contradicts <grade>: a format fault
             ("<grade>Exact</grade>", "Exact", 0),  # steps missing
             (None, None, 0), ("junk", None, 0)]  # unparsable: no grade, not well formed
    for text, grade, well_formed in cases:
        for gold in ESCI.words:
            # e.g. rat() for gold Exact: 1 * 1 + 0.1 * 1 = 1.1; for gold Substitute: 1 * 0 + 0.1 * 1 = 0.1
            want = 1.0 * (grade == gold) + 0.1 * well_formed
            assert rule_rewards(ex(gold), text, "esci", cfg)["total"] == pytest.approx(want), (text, gold)


# ------------------------------------------------------------------------------------------ TRL callable
def columns(examples):
    return {k: [e[k] for e in examples] for k in examples[0]}


def test_trl_callable_on_plain_and_conversational_completions():
    examples = [ex("Exact"), ex("Exact"), ex("Substitute"), ex("Exact")]
    texts = [rat(), rat(type="unrelated type; matches: belt"), WRONG, None]
    want = [FULL, FULL - 0.2, FULL, 0.0]
    logged = {}
    reward = RuleReward(RuleRewardConfig(), "esci")
    assert reward.__name__ == "rules"
    extra = dict(completion_ids=[[1], [2], [3], [4]], trainer_state=None, log_extra=lambda *a: None,
                 log_metric=lambda name, value: logged.__setitem__(name, value))
    out = reward(prompts=["p"] * 4, completions=texts, **columns(examples), **extra)
    assert out == pytest.approx(want)
    assert [c["total"] for c in reward.last_components] == pytest.approx(want)
    assert reward.last_components[1]["type"] == 0 and reward.last_components[3]["parsable"] == 0
    assert reward.completions == 4 and reward.unparsable == 1
    means = reward.component_means()
    assert means["type"] == pytest.approx(0.5) and means["total"] == pytest.approx(sum(want) / 4)
    assert logged == {f"rules/{k}": pytest.approx(means[k]) for k in means if k != "total"}
    chat = [[{"role": "assistant", "content": t}] if t is not None else [{"role": "assistant", "content": None}]
            for t in texts]
    prompts = [[{"role": "user", "content": "q"}]] * 4
    assert reward(prompts, chat, **columns(examples)) == pytest.approx(want)
    assert reward.completions == 8 and reward.unparsable == 2
    with pytest.raises(ValueError, match="label"):
        reward(["p"], [rat()], query=["q"])


def test_trl_callable_uses_facts_columns_when_present():
    from she_lib.facts import example_facts

    row = {**ex("Exact"), **example_facts(RECORD)}
    reward = RuleReward()
    assert reward(["p"], [rat(attr="some specs fail; fails: leather")], **columns([row])) == \
        pytest.approx([FULL - 0.4])


def test_completion_text():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "t"}]}]) == "t"
    assert completion_text({"role": "assistant", "content": "d"}) == "d"
    assert completion_text([{"role": "user", "content": "u"}]) is None
    assert completion_text(None) is None and completion_text(3) is None and completion_text([1]) is None


# ------------------------------------------------------------------------------------------ violation rate
def test_rule_violation_rate_on_a_small_list():
    pairs = [(ex(), rat()),  # consistent
             (ex(), rat(type="unrelated type; matches: belt")),  # type
             (ex("Substitute"), rat(attr="some specs fail; fails: leather")),  # attr + claims (wrong grade too)
             (ex(), "not a rationale"),  # unparsable: not counted
             (ex(), "<grade>Exact</grade>")]  # parsable, every rule unverifiable
    got = rule_violation_rate([e for e, _ in pairs], [t for _, t in pairs], "esci")
    assert got == approx({"n": 5, "parsable": 4, "unparsable_rate": 0.2, "rule_violation_rate": 0.5,
                          "violation_rate/type": 0.25, "violation_rate/attr": 0.25, "violation_rate/judge": 0.0,
                          "violation_rate/claims": 0.25, "unverifiable_rate/type": 0.25,
                          "unverifiable_rate/attr": 0.25, "unverifiable_rate/judge": 0.25,
                          "unverifiable_rate/claims": 0.25})
    import pandas as pd

    assert rule_violation_rate(pd.DataFrame([e for e, _ in pairs]), [t for _, t in pairs]) == got
    empty = rule_violation_rate([ex()], [None])
    assert empty["parsable"] == 0 and empty["rule_violation_rate"] is None and empty["unparsable_rate"] == 1
    with pytest.raises(ValueError):
        rule_violation_rate([ex()], [])


# ------------------------------------------------------------------------------------------ real data
def test_teacher_rationales_keep_every_rule_and_corruptions_break_one(smoke):
    from she_lib.corruptions import corrupt
    from she_lib.data import prepare_splits
    from she_lib.rationales import teacher_rationale

    splits = prepare_splits(smoke, write=False)[0]
    rows = [r for s in ("train", "validation") for r in splits[s].to_dict("records")]
    teacher = [teacher_rationale(r) for r in rows]
    rate = rule_violation_rate(rows, teacher, ESCI)
    assert rate["parsable"] == len(rows) and rate["rule_violation_rate"] == 0
    totals = [rule_rewards(r, t, ESCI)["total"] for r, t in zip(rows, teacher)]
    assert min(totals) >= FULL - 0.2 - 1e-9 and sum(t == pytest.approx(FULL) for t in totals) > 0.9 * len(rows)
    rng = random.Random(0)
    for kind in ("type", "attribute", "contradiction"):  # the grade stays right: the gate is open
        bad = [corrupt(r, kind, rng).rationale() for r in rows]
        assert rule_violation_rate(rows, bad, ESCI)["rule_violation_rate"] == 1.0, kind
        assert all(rule_rewards(r, t)["total"] < FULL - 0.1 for r, t in zip(rows, bad)), kind
