"""Hybrid examiner (she_lib.examiner): hand-computed rewards with a fixed-score GenRM stand-in."""
import numpy as np
import pandas as pd
import pytest

from she_lib.examiner import Examiner, HybridConfig, TableScorer, examine
from she_lib.schema import STEPS, render_rationale

RECORD = {"query": "leather belt without buckle", "title": "Levi's Men's Leather Belt, Brown", "brand": "Levi's",
          "colour": "Brown", "category": "Clothing > Men > Belts", "bullets": "Genuine leather with a metal buckle",
          "description": ""}
# the bullets state the excluded buckle, which Exact rules out: the attr verdict is "some specs unstated" (verifier)
ATTR_OK = "some specs unstated; unstated: no buckle"
OK = {"query": "wants: belt; specs: leather; excludes: buckle", "product": "Belts by Levi's, Brown",
      "type": "same type; matches: leather, belt", "attr": ATTR_OK, "judge": "Exact: same type, unstated specs taken as met"}
COMPLEMENT = {**OK, "type": "complementary type; matches: belt", "attr": "not decisive",
              "judge": "Complement: used with belt"}

A = render_rationale(OK, "Exact")  # every step decided correct
B = render_rationale(COMPLEMENT, "Complement")  # for a Complement pair: attr undecided -> GenRM
C = render_rationale({**OK, "product": "Belts by Nike, Brown", "judge": "Substitute: could serve"}, "Substitute")
D = A.replace(f"<attr>{ATTR_OK}</attr>\n", "")  # attr missing
E = A.replace("<type>", "<type>same type</type>\n<type>", 1)  # type repeated
F = "Exact, I think."  # unparsable
G = {A: [.9] * 5, B: [.9, .8, .7, .3, .6], C: [.8, .6, .9, .9, .1], D: [.9] * 5, E: [.9] * 5}


def rollout(text, label="Exact", **kw):
    return {**RECORD, "example_id": f"{label}:{len(str(text))}", "label": label, "rationale": text, **kw}


BATCH = [rollout(A), rollout(B, "Complement"), rollout(C), rollout(D)]


def test_verifier_first_rewards_sources_and_correctness():
    scorer = TableScorer(G)
    exam = examine(BATCH, scorer)
    assert exam.rewards.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, .3, 1], [1, 0, 1, 1, 0], [1, 1, 1, 0, 1]]
    assert exam.sources.tolist() == [["verifier"] * 5, ["verifier"] * 3 + ["genrm", "verifier"],
                                     ["verifier"] * 5, ["verifier"] * 3 + ["missing", "verifier"]]
    assert exam.correct.tolist() == [True, True, False, True]
    assert exam.well_formed.tolist() == [True, True, True, False]
    assert scorer.calls == 1 and exam.genrm_calls == 1  # only B has a present step the verifier leaves open
    assert np.isnan(exam.genrm[[0, 2, 3]]).all() and exam.genrm[1].tolist() == G[B]
    assert exam.rewards.shape == (4, len(STEPS)) and exam.reasons[2]["product"].startswith("'nike'")


def test_blend_rules():
    exam = examine([rollout(B, "Complement"), rollout(C)], TableScorer(G), HybridConfig(rule="blend", alpha=0.5))
    # decided: 0.5 v + 0.5 g; undecided: g
    assert exam.rewards == pytest.approx(np.array([[.95, .9, .85, .3, .8], [.9, .3, .95, .95, .05]]))
    assert exam.sources[0].tolist() == ["blend"] * 3 + ["genrm", "blend"]
    conf = examine([rollout(B, "Complement"), rollout(C)], TableScorer(G), HybridConfig(rule="confidence", alpha=0.5))
    # l = 0.5 |2g - 1|; r = (1 - l) v + l g: g = .9 -> l = .4, r = .6 + .36 = .96
    # C's judge: v = 0, g = .1 -> l = .4, r = .04
    assert conf.rewards == pytest.approx(np.array([[.96, .94, .94, .3, .96], [.94, .06, .96, .96, .04]]))
    assert examine([rollout(A)], TableScorer(G), HybridConfig(rule="blend", alpha=1.0)).rewards.tolist() == [[1] * 5]


def test_without_genrm_undecided_steps_get_the_default():
    exam = examine([rollout(B, "Complement")], None, HybridConfig(undecided_reward=0.25))
    assert exam.rewards.tolist() == [[1, 1, 1, .25, 1]] and exam.sources[0, 3] == "default" and exam.genrm_calls == 0


def test_bad_input_rewards():
    cfg = HybridConfig(missing_reward=-1, repeated_reward=-.25, unparsable_reward=-2, overlength_reward=-.5,
                       max_chars=400)
    long = A + "\n" + "x" * 400
    exam = examine([rollout(D), rollout(E), rollout(F), rollout(None), rollout(long), rollout(A, truncated=True),
                    rollout(42)], TableScorer(G), cfg)
    assert exam.rewards.tolist() == [[1, 1, 1, -1, 1], [1, 1, -.25, 1, 1], [-2] * 5, [-2] * 5, [-.5] * 5, [-.5] * 5,
                                     [-2] * 5]
    assert (exam.sources[1, 2], exam.sources[2, 0], exam.sources[4, 0]) == ("repeated", "unparsable", "overlength")
    assert exam.correct.tolist() == [True, True, False, False, False, False, False]
    assert exam.report()["rollouts_with"] == {"missing": 1, "repeated": 1, "unparsable": 3, "overlength": 2}
    # defaults: every bad-input reward is 0
    assert examine([rollout(F), rollout(D)]).rewards.tolist() == [[0] * 5, [1, 1, 1, 0, 1]]


def test_report_coverage_and_agreement():
    exam = examine(BATCH, TableScorer(G), HybridConfig(score_all=True))
    r = exam.report()
    # judged steps: 5 + 5 + 5 + 4 (D's attr is missing) = 19; decided: all but B's attr = 18
    assert r["steps_judged"] == 19 and r["verifier_coverage"] == pytest.approx(18 / 19)
    # both speak on the 18 decided steps; they disagree once: C's product (verifier 0, GenRM .6 >= .5)
    assert r["agreement_steps"] == 18 and r["agreement"] == pytest.approx(17 / 18)
    assert r["genrm_calls"] == 4 and r["correct_rate"] == .75 and r["seconds_per_1000"] >= 0
    sub = exam.select([1]).report()
    assert sub["steps_judged"] == 5 and sub["verifier_coverage"] == .8 and sub["agreement"] == 1.0
    assert exam.select(np.array([True, False, False, False])).report()["rollouts"] == 1
    assert examine([], TableScorer(G)).report()["verifier_coverage"] is None


def test_frame_and_dataframe_input():
    exam = Examiner(TableScorer(G)).examine(pd.DataFrame(BATCH))
    # the rewards worked out for the list input (test_verifier_first_rewards_sources_and_correctness)
    assert exam.rewards.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, .3, 1], [1, 0, 1, 1, 0], [1, 1, 1, 0, 1]]
    f = exam.frame()
    assert len(f) == 4 * len(STEPS) and f.loc[8, ["step", "source", "reward"]].tolist() == ["attr", "genrm", .3]


def test_scorer_keyed_by_example_and_unknown_rule():
    keyed = TableScorer({(BATCH[1]["example_id"], B): [0, 0, 0, .7, 0]})
    assert examine(BATCH[1:2], keyed).rewards.tolist() == [[1, 1, 1, .7, 1]]
    with pytest.raises(ValueError, match="unknown rule"):
        Examiner(None, HybridConfig(rule="average"))
