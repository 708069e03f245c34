"""AGRL's adaptive guided replay (she_lib.agrl) on SRPO's trainer: hints, trigger, off-policy treatment, recovery."""
from types import SimpleNamespace

import pytest
import torch

from she_lib.agrl import AdaptiveReplay, AGRLConfig, guided_messages, hint_text
from she_lib.labels import get_scale
from she_lib.rationales import teacher_rationale, teacher_steps
from she_lib.schema import build_messages, user_prompt
from she_lib.srpo_trainer import SRPOTrainer

SCALE = get_scale("esci")


def test_hints(splits):
    ex = splits["train"].iloc[0].to_dict()
    steps = teacher_steps(ex)
    assert hint_text(ex, "grade") == f"Hint: the correct grade is {ex['label']}."
    assert hint_text(ex, "steps") == (f"Hint: the correct grade is {ex['label']}. Product-type match: "
                                      f"{steps['type'].split(';')[0]}. Attribute match: {steps['attr'].split(';')[0]}.")
    msgs = guided_messages(ex, SCALE, "grade_first", "grade")
    assert msgs[0] == build_messages(ex, SCALE)[0] and msgs[1]["content"] == user_prompt(ex) + "\n" + hint_text(ex, "grade")
    with pytest.raises(ValueError, match="unknown hint"):
        hint_text(ex, "everything")
    with pytest.raises(ValueError, match="unknown hint"):
        AdaptiveReplay(AGRLConfig(hint="everything"))


def fake(g=4, rank=0, training=True):
    return SimpleNamespace(num_generations=g, num_generations_eval=g, model=SimpleNamespace(training=training),
                           accelerator=SimpleNamespace(process_index=rank), _metrics={"train": __import__(
                               "collections").defaultdict(list)})


def test_trigger_patience_and_recovery(splits):
    rows = splits["train"].head(2).to_dict("records")
    a, b = rows[0]["example_id"], rows[1]["example_id"]
    replay = AdaptiveReplay(AGRLConfig(threshold=0.0, patience=2, replace_fraction=0.5), SCALE)
    assert [replay.n_guided(g) for g in (1, 2, 4, 8)] == [0, 1, 2, 4]
    t = fake()
    batch = [rows[0]] * 4 + [rows[1]] * 4

    def visit(correct_a, correct_b):
        inputs = replay.prepare_inputs(t, batch)
        guided = [x["guided"] for x in inputs]
        recs = [(x["example_id"], c, gd) for x, c, gd in zip(inputs, correct_a + correct_b, guided)]
        replay._update(recs, t)
        return guided

    assert visit([0, 0, 0, 0], [1, 0, 0, 0]) == [False] * 8  # a fails once; b is right once
    assert replay.fails == {a: 1, b: 0}
    assert visit([0, 0, 0, 0], [0, 0, 0, 0]) == [False] * 8  # a: second failed visit reaches patience 2
    assert replay.fails == {a: 2, b: 1}
    # third visit: the last 2 of a's 4 rollouts are guided; the guided ones are right, the unguided still wrong
    assert visit([0, 0, 1, 1], [0, 0, 0, 0]) == [False, False, True, True] + [False] * 4
    assert replay.fails == {a: 3, b: 2} and t._metrics["train"]["agrl/guided_correct"][-1] == 1.0
    # b is guided too now; a's unguided rollouts recover (1 of 2 right > 0)
    assert visit([1, 0, 0, 0], [0, 0, 0, 0]) == [False, False, True, True] * 2
    assert replay.fails == {a: 0, b: 3} and replay.recovered == {a}
    assert replay.report() == {"groups_guided": 3, "prompts_guided": 2, "prompts_recovered": 1, "recovery_rate": 0.5,
                               "prompts_failing_now": 1}
    assert t._metrics["train"]["agrl/replay_groups"] == [0.0, 0.0, 1.0, 2.0]
    state = replay.state()
    other = AdaptiveReplay(AGRLConfig(threshold=0.0, patience=2, replace_fraction=0.5), SCALE)
    other.load(state)
    assert other.state() == state
    # the default threshold 0.25 counts a group with 1 of 4 right as a failed visit (the strict 0 does not): the
    # prompts the difficulty filter keeps are rarely all wrong
    loose = AdaptiveReplay(AGRLConfig(patience=1), SCALE)
    loose._update([(a, c, False) for c in (1, 0, 0, 0)] + [(b, c, False) for c in (1, 1, 0, 0)], t)
    assert AGRLConfig().threshold == 0.25 and loose.fails == {a: 1, b: 0}
    # rank 1 of 2 holds rollouts 2-3 of the group (global rows 2..3 of a batch of 4 rows per rank)
    assert [x["guided"] for x in replay.prepare_inputs(fake(rank=1), [rows[1]] * 2)] == [True, True]
    assert not any(x["guided"] for x in replay.prepare_inputs(fake(training=False), batch))  # never in evaluation


def test_guided_rollouts_train_as_unguided_with_positive_advantages(smoke, tmp_path, splits):
    from fakes import fake_trainer

    rows = splits["train"].head(2).to_dict("records")
    wrong = {ex["example_id"]: ["<grade>maybe"] * 4 for ex in rows}  # the policy never gets it right alone
    by_user = {user_prompt(ex): teacher_rationale(ex) for ex in rows}
    replay = AdaptiveReplay(AGRLConfig(patience=1, replace_fraction=0.25), SCALE)
    trainer, ds = fake_trainer(SRPOTrainer, smoke, tmp_path, rows, 0.0, rollouts=wrong, guided=by_user.get,
                               replay=replay)
    inputs = [ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    first = trainer._generate_and_score_completions(inputs)
    assert first["advantages"].abs().sum() == 0 and replay.fails == {ex["example_id"]: 1 for ex in rows}
    out = trainer._generate_and_score_completions(inputs)  # replay fires: rollout 3 of each group is guided
    guided_rows = [3, 7]
    plain = trainer.processing_class.apply_chat_template(build_messages(rows[0], SCALE), add_generation_prompt=True,
                                                         tokenize=True, return_dict=False)
    plain = plain["input_ids"] if isinstance(plain, dict) else list(plain)
    for r in guided_rows:
        ids = out["prompt_ids"][r][out["prompt_mask"][r].bool()].tolist()
        assert ids == out["prompt_ids"][r - 1][out["prompt_mask"][r - 1].bool()].tolist()  # the unguided prompt
    assert out["prompt_ids"][3][out["prompt_mask"][3].bool()].tolist() == plain
    adv = out["advantages"]
    assert (adv[guided_rows] > 0).all() and (adv[[0, 1, 2, 4, 5, 6]] < 0).all()
    assert trainer._metrics["train"]["agrl/replay_groups"] == [0.0, 2.0]
    assert trainer._metrics["train"]["agrl/guided_correct"][-1] == 1.0
    loss = trainer._compute_loss(trainer.model, out)
    loss.backward()
    assert torch.isfinite(loss)


def test_unvisited_prompt_with_low_pass_rate_is_guided_on_its_first_visit(splits):
    """A cpu-sized run visits each prompt once: the pool's pass rate stands in for the history (prior_from_pass_rate)."""
    rows = splits["train"].head(3).to_dict("records")
    low, high, unknown = ({**rows[0], "pass_rate": 0.25}, {**rows[1], "pass_rate": 0.26},
                          {**rows[2], "pass_rate": float("nan")})
    replay = AdaptiveReplay(AGRLConfig(), SCALE)  # threshold 0.25, patience 1, one of 4 rollouts guided
    assert [replay.failed_visits(ex) for ex in (low, high, unknown, rows[0])] == [1, 0, 0, 0]
    t = fake()
    inputs = replay.prepare_inputs(t, [low] * 4 + [high] * 4 + [unknown] * 4)
    assert [x["guided"] for x in inputs] == [False, False, False, True] + [False] * 8
    # once visited, the history decides: low's unguided rollouts were 2 of 3 right, so it is no longer flagged
    replay._update([(low["example_id"], c, g) for c, g in ((1, 0), (1, 0), (0, 0), (1, 1))], t)
    assert replay.fails[low["example_id"]] == 0 and replay.failed_visits(low) == 0
    off = AdaptiveReplay(AGRLConfig(prior_from_pass_rate=False), SCALE)
    assert not any(x["guided"] for x in off.prepare_inputs(t, [low] * 4))
