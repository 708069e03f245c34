"""Stepwise-reward inspector: log loading, colours, HTML, selection state and widget callbacks (headless), demo group."""
import json

import numpy as np
import pytest

from she_lib.inspector import (NO_READING, Inspector, InspectorState, advantage_colour, demo_group, load_rollouts,
                               render_rollout, reward_colour, rollout_logs)
from she_lib.schema import STEPS

COMPLETION = ("<grade>Exact</grade>\n<query>wants: bottle</query>\n<product>Bottle by Giotto</product>\n"
              "<type>same type; matches: bottle</type>\n<attr>all specs met</attr>\n<judge>Exact: same type</judge>")


def rollout(step, group, i, query, correct=True, **kw):
    tokens = ["<grade>Exact</grade>\n", "<query>wants: bottle</query>", "\n<judge>x</judge>"]
    rec = {"step": step, "group": group, "rollout": i, "example_id": f"{query}:{step}", "query": query,
           "title": "Giotto Water Bottle", "label": "Exact", "completion": COMPLETION, "grade": "Exact" if correct else "Substitute",
           "correct": correct, "outcome_reward": 1.1 if correct else 0.1, "outcome_advantage": 0.5 if correct else -0.5,
           "steps": list(STEPS), "step_rewards": {"verifier": [1.0, None, 0.0, 1.0, 1.0], "genrm": None,
                                                   "combined": [1.0, 0.5, 0.0, 1.0, 1.0]},
           "step_sources": ["verifier", "default", "verifier", "verifier", "verifier"],
           "step_advantages": [0.2, 0.0, -1.0, 0.2, 0.2], "critical": ["", "", "first_error", "", "discriminative"],
           "tokens": tokens, "token_advantages": [0.5, 2.0, -1.0], "token_steps": ["", "query", "judge"]}
    rec.update(kw)
    return rec


@pytest.fixture
def runs_dir(tmp_path):
    """run ``srpo``: query qa in groups (1, 0) and (2, 1), query qb in (1, 1); 3 rollouts each. run ``agrl``: one group."""
    recs = [rollout(1, 0, i, "qa", correct=i != 2) for i in range(3)]
    recs += [rollout(1, 1, i, "qb") for i in range(3)] + [rollout(2, 1, i, "qa") for i in (2, 0, 1)]
    for name, rows in (("srpo", recs), ("agrl", [rollout(5, 0, i, "qc") for i in range(2)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "rollouts.jsonl").write_text("")  # empty: not a source
    return tmp_path


def test_load_rollouts_checks_every_line(tmp_path):
    good = json.dumps(rollout(0, 0, 0, "q"))
    path = tmp_path / "r.jsonl"
    path.write_text(good + "\n" + good[:40])  # the trainer is writing the last line
    assert len(load_rollouts(path)) == 1
    path.write_text(good[:40] + "\n" + good + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: not JSON"):
        load_rollouts(path)
    bad = rollout(0, 0, 0, "q")
    del bad["token_steps"]
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r":2: rollout record lacks \['token_steps'\]"):
        load_rollouts(path)


def test_rollout_logs_skip_empty_logs(runs_dir):
    assert list(rollout_logs(runs_dir)) == ["agrl", "srpo"]
    assert InspectorState.from_runs(runs_dir / "sft") is None


def test_colours_are_the_documented_colormaps():
    assert reward_colour(0.0) == "#a50026" and reward_colour(1.0) == "#006837"  # RdYlGn ends
    assert reward_colour(None) == NO_READING and reward_colour(float("nan")) == NO_READING
    assert reward_colour(7.0) == reward_colour(1.0)  # clipped
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    assert advantage_colour(0.0, 2.0) == to_hex(colormaps["RdBu"](0.5)) == "#f6f7f7"  # RdBu's middle entry
    assert advantage_colour(1.0, 2.0) == to_hex(colormaps["RdBu"](0.75))
    assert advantage_colour(2.0, 2.0) == "#053061" and advantage_colour(-5.0, 2.0) == "#67001f"


def test_render_rollout_colours_steps_and_tokens():
    rec = rollout(1, 0, 2, "qa", correct=False)
    page = render_rollout(rec, "combined", scale=2.0)
    assert "grade <b>Substitute</b> vs human label <b>Exact</b>" in page and "&#10007; wrong" in page
    assert "wants: bottle" in page and "Exact: same type" in page  # step texts from the completion
    # the type step (reward 0) is edged red, the product step (0.5, a default) in the middle colour
    assert f"border-left:6px solid {reward_colour(0.0)};padding:2px 6px;max-width:520px\">same type; matches" in page
    assert f"border-left:6px solid {reward_colour(0.5)}" in page
    assert "&#9873; first error" in page and "&#9670; discriminative" in page
    # token 1: advantage 2.0 = the scale -> darkest blue, underlined in the query step's colour (reward 1)
    assert (f'advantage +2.000" style="background:{advantage_colour(2.0, 2.0)};border-bottom:3px solid '
            f'{reward_colour(1.0)}' in page)
    assert "&lt;query&gt;wants: bottle&lt;/query&gt;" in page  # tokens are escaped
    verifier = render_rollout(rec, "verifier", scale=2.0)  # the product step has no verifier reading: grey
    assert f"border-left:6px solid {NO_READING}" in verifier
    with pytest.raises(ValueError, match="unknown reader"):
        render_rollout(rec, "oracle")


def test_state_selection_and_callbacks(runs_dir):
    state = InspectorState.from_runs(runs_dir)
    seen = []
    state.on_change(lambda s: seen.append((s.run, s.query, s.group_key, s.rollout, s.reader)))
    assert state.runs == ["agrl", "srpo"] and state.run == "agrl" and state.query == "qc"
    state.select_run("srpo")
    assert state.queries == ["qa", "qb"] and state.groups == [(1, 0), (2, 1)]
    assert seen[-1] == ("srpo", "qa", (1, 0), 0, "combined")
    state.select_rollout(2)
    assert state.current["correct"] is False and seen[-1][3] == 2
    state.select_group((2, 1))  # a new group starts at rollout 0; rollouts come sorted by index
    assert [r["rollout"] for r in state.group] == [0, 1, 2] and state.rollout == 0
    state.select_query("qb")
    assert state.group_key == (1, 1) and len(seen) == 4
    state.select_reader("verifier")
    assert seen[-1][4] == "verifier" and "verifier" in state.html()
    for bad, call in ((KeyError, lambda: state.select_run("dpo")), (KeyError, lambda: state.select_query("zz")),
                      (KeyError, lambda: state.select_group((9, 9))), (IndexError, lambda: state.select_rollout(3)),
                      (ValueError, lambda: state.select_reader("x"))):
        with pytest.raises(bad):
            call()
    assert len(seen) == 5  # a refused selection changes nothing


def test_state_from_records_and_export(tmp_path):
    state = InspectorState({"demo": [rollout(0, 0, i, "q") for i in range(2)]})
    path = state.export_html(tmp_path / "out" / "group.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text and text.count('class="she-rollout"') == 2
    with pytest.raises(ValueError, match="no rollout source"):
        InspectorState({})


def test_widget_follows_and_drives_the_state(runs_dir):
    state = InspectorState.from_runs(runs_dir)
    ui = Inspector(state)
    assert ui.run.value == "agrl" and ui.rollout.max == 1 and ui.query.options == ("qc",)
    ui.run.value = "srpo"  # the menu drives the state, the state re-syncs every control
    assert state.run == "srpo" and ui.query.value == "qa" and ui.group.value == (1, 0) and ui.rollout.max == 2
    ui.rollout.value = 2
    assert state.rollout == 2 and "&#10007; wrong" in ui.view.value
    ui.group.value = (2, 1)
    assert state.group_key == (2, 1) and ui.rollout.value == 0
    state.select_query("qb")  # and the state drives the controls
    assert ui.query.value == "qb" and ui.group.value == (1, 1)
    ui.reader.value = "verifier"
    assert state.reader == "verifier"
    bundle = ui._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and 'class="she-rollout"' in bundle["text/html"]


def test_demo_group_examines_teacher_and_corruptions(tokenizer):
    from she_lib.facts import example_facts

    row = {"example_id": "1:A", "query": "1/2 gallon water bottle without straw", "title": "Giotto Water Bottle with Straw",
           "brand": "Giotto", "colour": "Gray", "category": "Sports > Water Bottles", "bullets": "", "label": "Substitute"}
    group = demo_group({**row, **example_facts(row)}, tokenizer)
    assert [r["origin"] for r in group] == ["teacher", "corrupt:type", "corrupt:attribute", "corrupt:grade",
                                            "corrupt:contradiction", "teacher rationale for Exact"]
    assert [r["correct"] for r in group] == [True, True, True, False, True, False]
    assert group[0]["step_rewards"]["combined"] == [1.0] * 5 and group[0]["step_rewards"]["genrm"] is None
    assert group[1]["step_rewards"]["combined"][2] == 0.0  # the corrupted type step
    assert group[3]["critical"][STEPS.index("judge")] == "first_error"  # the flipped grade's judgement
    for r in group:
        assert "".join(r["tokens"]) == r["completion"] and len(r["tokens"]) == len(r["token_advantages"])
        assert set(r["token_steps"]) == {"", "grade", *STEPS}  # the <grade> element carries the decision credit
        assert sum(r["outcome_advantage"] for r in group) == pytest.approx(0, abs=1e-3)
    state = InspectorState({"demo": group})
    assert len(state.group) == 6 and state.current["origin"] == "teacher"

    class Quarter:  # a GenRM stand-in: P(correct) 0.25 for every step
        def score(self, examples, rationales):
            return np.full((len(rationales), len(STEPS)), 0.25)

    with_genrm = demo_group({**row, **example_facts(row)}, tokenizer, genrm=Quarter())
    assert all(r["step_rewards"]["genrm"] == [0.25] * 5 for r in with_genrm)  # it reads every step
    assert [r["step_rewards"]["combined"] for r in with_genrm] == [r["step_rewards"]["combined"] for r in group]
