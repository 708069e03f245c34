"""RL prompt set (she_lib.curriculum): difficulty filter, diversity round-robin, entropies, curriculum order, and
the first-token pass rates of she_lib.rl."""
import math

import pandas as pd
import pytest

import she_lib.rl as rl
from she_lib.curriculum import (CurriculumConfig, build_rl_prompts, curriculum_order, difficulty_filter,
                                diversity_sample, entropy_bits, label_cv, pass_rates, stage_of)
from she_lib.inference import grade_probabilities
from she_lib.labels import get_scale
from she_lib.modeling import load_run
from she_lib.schema import render_prompt

WORDS = ("Exact", "Substitute", "Complement", "Irrelevant")


def frame():
    """8 prompts of 4 queries; grades and categories chosen by hand."""
    return pd.DataFrame({
        "example_id": [f"e{i}" for i in range(8)],
        "query": ["q0", "q0", "q0", "q1", "q1", "q2", "q3", "q3"],
        "label": ["Exact", "Exact", "Exact", "Exact", "Substitute", "Irrelevant", "Exact", "Complement"],
        "category": ["A > x", "A > y", "A", "B > z", "B", "", "A", "B"],
    })


def samples(rates: dict[str, list[bool]]) -> pd.DataFrame:
    return pd.DataFrame([{"example_id": e, "sample": j, "good": g} for e, gs in rates.items() for j, g in enumerate(gs)])


def test_entropy_and_cv_hand_computed():
    assert entropy_bits(["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert entropy_bits(["a", "a", "a", "b"]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert entropy_bits([]) == 0.0
    # counts (2, 1, 1, 0): mean 1, population std sqrt(0.5)
    assert label_cv(["Exact", "Exact", "Substitute", "Complement"], WORDS) == pytest.approx(math.sqrt(0.5))
    assert label_cv(list(WORDS), WORDS) == 0.0


def test_difficulty_filter_counts():
    df = frame()
    rates = pass_rates(samples({"e0": [1, 1, 1, 1], "e1": [0, 0, 0, 0], "e2": [1, 0, 0, 0], "e3": [1, 1, 1, 0],
                                "e4": [1, 1, 0, 0], "e5": [0, 0, 0, 0], "e6": [1, 1, 1, 1], "e7": [0, 1, 0, 0]}))
    kept, rep = difficulty_filter(df, rates, CurriculumConfig(min_prompts=4))
    assert kept["example_id"].tolist() == ["e2", "e3", "e4", "e7"]
    assert rep == {"pool": 8, "always_right": 2, "always_wrong": 2, "below_min": 2, "above_max": 2,
                   "mean_pass_rate": pytest.approx((4 + 1 + 3 + 2 + 4 + 1) / 32), "kept": 4, "fallback_added": 0}
    off, rep_off = difficulty_filter(df, rates, CurriculumConfig(difficulty=False))
    assert len(off) == 8 and rep_off["kept"] == 8 and off["pass_rate"].tolist()[:3] == [1.0, 0.0, 0.25]
    # min_prompts 6: 2 more from outside the band, ties (distance 0.01 below, 0.1 above) -> nearest first
    filled, rep6 = difficulty_filter(df, rates, CurriculumConfig(min_prompts=6))
    assert rep6["fallback_added"] == 2 and rep6["kept"] == 6
    assert set(filled["example_id"][4:]) == {"e1", "e5"}  # p = 0 is 0.01 from the band, p = 1 is 0.1 above it
    with pytest.raises(ValueError, match="no pass rate for 1 prompt"):
        difficulty_filter(df, rates.drop("e7"), CurriculumConfig())


def test_diversity_round_robin_balances_grades_and_caps_queries():
    df = frame()
    cfg = CurriculumConfig(balance=("label",), per_query_cap=2, select=4, seed=0)
    out, rep = diversity_sample(df, cfg, WORDS)
    # one prompt of each grade first (strata in sorted order: Complement, Exact, Irrelevant, Substitute)
    assert sorted(out["label"]) == sorted(WORDS) and len(out) == 4
    assert rep["selected"]["grade_cv"] == 0.0 and rep["selected"]["grade_entropy"] == pytest.approx(2.0)
    assert rep["pool"]["n"] == 8 and rep["pool"]["grade_entropy"] < 2.0
    # no cap on the selection size: every prompt but the third of q0 (cap 2 per query)
    full, _ = diversity_sample(df, CurriculumConfig(balance=("label",), per_query_cap=2), WORDS)
    assert len(full) == 7 and full["query"].value_counts().max() == 2
    assert full["top_category"].tolist().count("(none)") == 1
    plain, _ = diversity_sample(df, CurriculumConfig(diversity=False, select=3), WORDS)
    assert len(plain) == 3


@pytest.mark.parametrize("right", [False, True])
def test_never_or_always_right_policy_still_gives_a_prompt_set(right):
    """A policy whose samples are all wrong (or all right) leaves no prompt in the band: the fallback fills the
    set to min_prompts (always-wrong first: nearer the band) and the report says so; the curriculum has steps."""
    df = frame()
    s = samples({f"e{i}": [right] * 4 for i in range(8)})
    out, rep = build_rl_prompts(df, s, CurriculumConfig(min_prompts=3, balance=("label",), per_query_cap=None), WORDS, 2)
    assert rep["difficulty"]["fallback_added"] == 3 and rep["difficulty"]["kept"] == 3
    assert ("3 always right" if right else "3 always wrong") in rep["difficulty"]["fallback"]
    assert rep["curriculum"]["steps"] == 2 and len(out) == 4  # one stage (p=1 -> easiest, p=0 -> hardest): ceil(3/2)
    assert set(out["pass_rate"]) == {1.0 if right else 0.0}
    with pytest.raises(ValueError, match="no RL prompt of 8 has a pass rate"):
        build_rl_prompts(df, s, CurriculumConfig(fallback="raise"), WORDS, 2)
    with pytest.raises(ValueError, match="fallback must be"):
        CurriculumConfig(fallback="grow")


def test_stages_and_curriculum_order():
    assert [stage_of(p, (0.6, 0.3)) for p in (1.0, 0.61, 0.6, 0.31, 0.3, 0.0)] == [0, 0, 1, 1, 2, 2]
    df = frame().assign(pass_rate=[0.9, 0.8, 0.5, 0.4, 0.35, 0.1, 0.2, 0.7])
    out, rep = curriculum_order(df, CurriculumConfig(stage_steps=(1, 2, 1)), prompts_per_step=2)
    assert out["stage"].tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert set(out["example_id"][:2]) <= {"e0", "e1", "e7"} and set(out["example_id"][2:6]) == {"e2", "e3", "e4"}
    assert set(out["example_id"][6:]) == {"e5", "e6"}
    assert [s["prompts"] for s in rep["stages"]] == [3, 3, 2] and rep["steps"] == 4
    # one pass per stage when stage_steps is None: ceil(3/2) + ceil(3/2) + ceil(2/2) steps
    _, rep1 = curriculum_order(df, CurriculumConfig(), prompts_per_step=2)
    assert rep1["steps"] == 5
    flat, rep2 = curriculum_order(df, CurriculumConfig(curriculum=False, stage_steps=(3,)), prompts_per_step=2)
    assert set(flat["stage"]) == {0} and len(flat) == 6 and rep2["steps"] == 3
    with pytest.raises(ValueError, match="stage_steps has 2 entries for 3 stages"):
        curriculum_order(df, CurriculumConfig(stage_steps=(1, 1)), 2)
    with pytest.raises(ValueError, match="no RL prompts left"):
        curriculum_order(df.iloc[:0], CurriculumConfig(), 2)


def test_build_rl_prompts_report():
    df = frame()
    s = samples({f"e{i}": [i % 2 == 0, True, False, False] for i in range(8)})  # pass rate 0.5 or 0.25
    out, rep = build_rl_prompts(df, s, CurriculumConfig(balance=("label",), per_query_cap=None), WORDS, 2)
    assert rep["difficulty"]["kept"] == 8 and rep["diversity"]["selected"]["n"] == 8
    assert [st["prompts"] for st in rep["curriculum"]["stages"]] == [0, 4, 4] and len(out) == 8
    assert out["stage"].tolist() == [1] * 4 + [2] * 4
    with pytest.raises(ValueError, match="need pass rates"):
        build_rl_prompts(df, None, CurriculumConfig(), WORDS, 2)
    plain, _ = build_rl_prompts(df, None, CurriculumConfig(difficulty=False, curriculum=False), WORDS, 2)
    assert len(plain) == 8


def test_balanced_stage_order_cycles_grades_with_replacement():
    df = frame().assign(pass_rate=0.5)  # grades E E E E S I E C
    cfg = CurriculumConfig(curriculum=False, stage_steps=(10,), stage_order="balanced")
    out, rep = curriculum_order(df, cfg, prompts_per_step=2, words=WORDS)
    # round-robin in WORDS order over the grades present; rare grades repeat
    assert out["label"].tolist() == ["Exact", "Substitute", "Complement", "Irrelevant"] * 5
    assert out["example_id"][out["label"] == "Substitute"].tolist() == ["e4"] * 5
    # 5 Exact slots for 5 Exact prompts: one full seeded permutation, each prompt once
    assert sorted(out["example_id"][out["label"] == "Exact"]) == ["e0", "e1", "e2", "e3", "e6"]
    assert rep["stages"][0]["slots_by_grade"] == {"Exact": 5, "Substitute": 5, "Complement": 5, "Irrelevant": 5}
    # the same call with the default order: grades in the filtered proportions (5 of 8 prompts Exact)
    rnd, rep_r = curriculum_order(df, CurriculumConfig(curriculum=False, stage_steps=(4,)), prompts_per_step=2)
    assert sorted(rnd["example_id"]) == sorted(df["example_id"]) and rep_r["stages"][0]["slots_by_grade"]["Exact"] == 5
    # the run key: stage_order appears only when it is not the default (runs recorded before it stay valid)
    assert "stage_order" not in CurriculumConfig().to_dict() and cfg.to_dict()["stage_order"] == "balanced"
    with pytest.raises(ValueError, match="stage_order must be"):
        CurriculumConfig(stage_order="sorted")


def test_rates_given_directly_are_the_pass_rates():
    """pass_source "first_token" hands build_rl_prompts P(gold) per prompt: the band keeps 0.01 <= p <= 0.9."""
    rates = pd.Series([0.95, 0.005, 0.5, 0.2, 0.9, 0.01, 0.7, 0.3], index=[f"e{i}" for i in range(8)])
    cfg = CurriculumConfig(min_prompts=1, diversity=False, curriculum=False, pass_source="first_token")
    out, rep = build_rl_prompts(frame(), None, cfg, WORDS, 1, rates=rates)
    d = rep["difficulty"]
    assert d["kept"] == 6 and d["above_max"] == 1 and d["below_min"] == 1
    assert sorted(out["example_id"]) == ["e2", "e3", "e4", "e5", "e6", "e7"]
    assert dict(zip(out["example_id"], out["pass_rate"])) == {e: rates[e] for e in out["example_id"]}
    assert rep["config"]["pass_source"] == "first_token"
    assert "pass_source" not in CurriculumConfig().to_dict()  # the default keeps earlier run keys valid
    with pytest.raises(ValueError, match="pass_source"):
        CurriculumConfig(pass_source="probe")


def test_first_token_pass_rates_are_p_gold_and_cached(smoke, splits, trained_sft, monkeypatch):
    pool = splits["train"].head(5)
    rates = rl.first_token_pass_rates(smoke, trained_sft, pool)
    policy = load_run(trained_sft, smoke)
    words = get_scale("esci").words
    prompts = [render_prompt(policy.tokenizer, r, get_scale("esci")) for r in pool.to_dict("records")]
    probs = grade_probabilities(policy.model, policy.tokenizer, prompts, words, progress=False)
    expected = [probs[i][words.index(label)] for i, label in enumerate(pool["label"])]
    assert list(rates.index) == list(pool["example_id"]) and rates.to_numpy() == pytest.approx(expected, abs=1e-5)
    monkeypatch.setattr(rl, "load_run", None)  # a cached pool needs no model
    assert rl.first_token_pass_rates(smoke, trained_sft, pool).equals(rates)
    with pytest.raises(ValueError, match="grade_first"):
        rl.first_token_pass_rates(smoke.replace(order="steps_first"), trained_sft, pool)


def test_a_steps_first_run_of_a_first_token_budget_skips_the_difficulty_filter(smoke, splits, monkeypatch):
    """cpu-full reads pass rates at the grade token, which a steps-first policy writes last: its curriculum drops the
    filter, and its prompt set is built with no model, every pass rate 0.5 (online grade weights start equal)."""
    from she_lib.config import get_profile

    assert rl.curriculum_for(get_profile("cpu-full")).difficulty
    steps = rl.curriculum_for(get_profile("cpu-full", order="steps_first"))
    assert not steps.difficulty and steps.pass_source == "first_token" and steps.stage_order == "balanced"
    monkeypatch.setattr(rl, "load_run", None)  # nothing may load a model
    cfg = CurriculumConfig(pool_limit=8, pass_source="first_token", difficulty=False, curriculum=False,
                           stage_steps=(2,), stage_order="balanced")
    prompts, report = rl.rl_prompts(smoke.replace(order="steps_first"), "no/such/run", cfg, 2, splits)
    assert len(prompts) == 4 and set(prompts["pass_rate"]) == {0.5} and report["difficulty"]["kept"] == 8


def test_cli_variants_need_their_own_run_name(capsys):
    """A run whose curriculum or settings differ from the profile's must be named: without --name it would take the
    default run folder of another setting. The check comes before anything is read."""
    for extra in (["--stage-steps", "54"], ["--learning-rate", "1e-4"]):
        with pytest.raises(SystemExit) as e:
            rl.main(["--method", "grpo", "--profile", "smoke", "--sft", "no/such/run", *extra])
        assert e.value.code == 2 and "needs its own --name" in capsys.readouterr().err
