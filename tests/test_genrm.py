"""GenRM (she_lib.genrm, genrm_data, genrm_eval) and its corruptions, on the tiny model and the smoke data."""
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from she_lib.corruptions import COLOURS, KINDS, POLICY_KINDS, corrupt, corrupt_frame
from she_lib.genrm import GenRM, GenRMConfig, train_genrm, verdict_weights
from she_lib.genrm_data import (GENRM_SYSTEM, build_genrm_dataset, complete, decided, genrm_messages, labelled_rows,
                                policy_rows, verdict_text, verdict_token_ids)
from she_lib.genrm_eval import save_genrm_results, step_metrics, tune_threshold, undecided_sample
from she_lib.labels import ESCI
from she_lib.rationales import teacher_rationale
from she_lib.schema import STEPS, parse
from she_lib.verifier import INCORRECT, verify
from callbacks import StopAt
from fakes import bf16_with_large_logits


def fast(smoke, **kw):
    return GenRMConfig.for_profile(smoke, **{**dict(warmup_ratio=0.0, save_steps=1000), **kw})


# ------------------------------------------------------------------------------------------ config
def test_profiles_and_the_cpu_full_budget():
    smoke = GenRMConfig.for_profile("smoke")
    assert smoke.max_steps == 4 and smoke.bf16 is False and smoke.policy_samples == 1
    full = GenRMConfig.for_profile("cpu-full")
    rows = full.teacher_pairs + len(KINDS) * full.corruptions_per_kind + full.policy_prompts * full.policy_samples
    assert 20 <= rows * 296 / 230 / 60 <= 25  # minutes of training at the measured ~230 tok/s, 296 tokens a row
    assert smoke.policy_base_fallback and not full.policy_base_fallback  # cpu-full samples the SFT run only
    sft = full.sft_config("steps_first")
    assert (sft.order, sft.max_length, sft.epochs) == ("steps_first", 640, 1.0)
    assert sft.train_limit is None and sft.eval_limit is None
    assert GenRMConfig.for_profile("cpu", threshold=0.7).threshold == 0.7


# ------------------------------------------------------------------------------------------ format
def test_verdict_lines_and_tokens(tokenizer):
    assert verdict_text([1, 1, 0, 1, 1]) == \
        "query: correct\nproduct: correct\ntype: incorrect\nattr: correct\njudge: correct"
    with pytest.raises(ValueError):
        verdict_text([1, 1, -1, 1, 1])
    assert verdict_text([1, 1, -1, 0, 1], filler="unknown").split("\n")[2:4] == ["type: unknown", "attr: incorrect"]
    # " correct", " incorrect", " unknown": single, distinct
    assert verdict_token_ids(tokenizer, ("correct", "incorrect", "unknown")) == [2887, 11798, 6552]
    with pytest.raises(ValueError, match="single token"):
        verdict_token_ids(tokenizer, ("correct", "zzqx"))
    with pytest.raises(ValueError, match="share"):
        verdict_token_ids(tokenizer, ("yes", "yes"))
    ex = {"query": "mug", "title": "Blue Mug", "brand": "", "colour": "", "category": "", "bullets": "",
          "description": "", "label": "Substitute"}
    assert genrm_messages(ex, "<grade>Exact</grade>", show_label=False) == [
        {"role": "system", "content": GENRM_SYSTEM},
        {"role": "user", "content": "Query: mug\nProduct: Blue Mug\nRationale:\n<grade>Exact</grade>"}]
    assert genrm_messages(ex, "<grade>Exact</grade>")[1]["content"] == \
        "Query: mug\nProduct: Blue Mug\nHuman grade: Substitute\nRationale:\n<grade>Exact</grade>"
    facts = {**ex, "matched_terms": ["mug"], "missing_terms": ["red", "12oz"], "negation_hits": []}
    assert genrm_messages(facts, "r", show_label=False, show_evidence=True)[1]["content"] == \
        "Query: mug\nProduct: Blue Mug\nEvidence: found: mug; missing: red, 12oz\nRationale:\nr"
    assert "Evidence" not in genrm_messages(facts, "r")[1]["content"]


# ------------------------------------------------------------------------------------------ corruptions
@pytest.mark.parametrize("kinds", [KINDS, POLICY_KINDS])
def test_corruptions_are_seeded_single_step_and_verifier_incorrect(splits, kinds):
    a, b = corrupt_frame(splits["train"], 20, seed=3, kinds=kinds), corrupt_frame(splits["train"], 20, seed=3, kinds=kinds)
    assert a.equals(b) and not a["rationale"].equals(corrupt_frame(splits["train"], 20, seed=4, kinds=kinds)["rationale"])
    assert a["origin"].value_counts().to_dict() == {f"corrupt:{k}": 20 for k in kinds}
    for r in a.to_dict("records"):
        assert sorted(r["labels"]) == [0, 1, 1, 1, 1]
        bad = STEPS[r["labels"].index(0)]
        v = verify(r, r["rationale"])
        assert v.steps[bad].truth == INCORRECT, (r["origin"], bad, v.steps[bad])
        assert all(v.steps[s].truth != INCORRECT for s in STEPS if s != bad)
        assert parse(r["rationale"], ESCI).parsed
        kind = r["origin"].split(":")[1]
        assert bad in {"type": {"type"}, "attribute": {"type", "product"}, "grade": {"judge"},
                       "contradiction": {"attr", "judge"}, "query_word": {"query"}, "product_word": {"product"},
                       "no_grade": {"judge"}}[kind]


def test_corruption_fallbacks_by_hand():
    ex = {"query": "red mug", "title": "Blue Cup", "brand": "Acme", "colour": "Blue", "category": "Kitchen > Cups",
          "bullets": "", "label": "Exact", "query_terms": ["red", "mug"], "negated_terms": [], "product_type": "Cups",
          "matched_terms": [], "missing_terms": [], "negation_hits": []}
    c = corrupt(ex, "attribute", random.Random(0))
    assert c.step == "product" and c.labels() == [1, 0, 1, 1, 1]
    assert c.steps["product"].startswith("Cups by Acme, Blue, ")
    c = corrupt(ex, "contradiction", random.Random(0))  # no match listed: the judgement contradicts <grade>
    assert c.step == "judge" and c.grade == "Exact" and not c.steps["judge"].startswith("Exact")
    c = corrupt({**ex, "matched_terms": ["mug"], "missing_terms": ["red"]}, "attribute", random.Random(0))
    assert c.steps["type"] == "same type; matches: mug, red" and c.step == "type"
    c = corrupt({**ex, "matched_terms": ["mug"]}, "contradiction", random.Random(0))
    assert (c.step, c.steps["attr"]) == ("attr", "some specs fail; fails: mug")
    g = corrupt(ex, "grade", random.Random(0))
    assert g.grade != "Exact" and g.steps["judge"].startswith(g.grade) and g.step == "judge"
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(ex, "typo", random.Random(0))



def test_policy_error_corruptions_by_hand():
    """The policy's own errors: a record word in the query step, a query word in the product step, no grade."""
    ex = {"query": "red mug", "title": "Blue Cup", "brand": "Acme", "colour": "Blue", "category": "Kitchen > Cups",
          "bullets": "", "label": "Exact", "query_terms": ["red", "mug"], "negated_terms": [], "product_type": "Cups",
          "matched_terms": [], "missing_terms": ["red", "mug"], "negation_hits": []}
    c = corrupt(ex, "query_word", random.Random(0))
    assert c.step == "query" and c.labels() == [0, 1, 1, 1, 1]
    assert c.steps["query"].startswith("wants: mug; specs: ") and c.steps["query"].split("specs: ")[1].split(",")[0] in (
        "blue", "cup")  # a title word the query lacks, first in the specs
    assert verify(ex, c.rationale()).steps["query"].truth == INCORRECT
    mug = {**ex, "title": "Red Mug", "colour": ""}  # every title word is in the query: a colour instead
    assert corrupt(mug, "query_word", random.Random(0)).steps["query"].split("specs: ")[1].split(",")[0] in COLOURS
    c = corrupt(ex, "product_word", random.Random(0))
    assert c.step == "product" and c.steps["product"].rsplit(", ", 1)[1] in ("red", "mug")
    assert verify(ex, c.rationale()).steps["product"].truth == INCORRECT
    c = corrupt(ex, "no_grade", random.Random(0))
    assert c.step == "judge" and c.grade == "Exact" and not c.steps["judge"].startswith("Exact")
    assert verify(ex, c.rationale()).steps["judge"].reason == "the judgement states no grade"


def test_sources_and_labels(splits):
    rows = labelled_rows(splits["train"], 6, 2, seed=0)
    assert rows["origin"].value_counts()["teacher"] == 6 and len(rows) == 6 + 2 * len(KINDS)
    for r in rows.to_dict("records"):  # every label is the verifier's; a corrupted step keeps its 0
        v = [-1 if np.isnan(x) else int(x) for x in verify(r, r["rationale"]).vector()]
        assert r["labels"] == v, (r["origin"], r["labels"], v)
        assert r["labels"].count(0) == (0 if r["origin"] == "teacher" else 1) and 1 in r["labels"]
    df = splits["train"][splits["train"]["label"] == "Exact"].head(3)
    pol = policy_rows(df, ["Exact, I think.", "<grade>Exact</grade>", teacher_rationale(df.iloc[2])])
    assert pol["labels"].tolist() == [[-1] * 5, [-1] * 5, [1] * 5] and pol["origin"].eq("policy").all()
    assert complete(pol)["rationale"].tolist() == [teacher_rationale(df.iloc[2])]
    part = pol.assign(labels=[[-1] * 5, [1, -1, -1, -1, -1], [1] * 5])
    assert decided(part)["labels"].tolist() == [[1, -1, -1, -1, -1], [1] * 5]


def test_verdict_weights_balance_the_decided_verdicts(tokenizer):
    rows = pd.DataFrame({"labels": [[1, 1, 0, -1, 1], [1, 0, 1, 1, 1]]})  # 7 correct, 2 incorrect, 1 undecided
    assert verdict_weights(rows, GenRMConfig(), tokenizer) == {2887: 1.0, 11798: 3.5, 6552: 0.0}
    assert verdict_weights(rows, GenRMConfig(incorrect_weight=2, undecided_word=None), tokenizer) == \
        {2887: 1.0, 11798: 2.0}


def test_token_weights_in_the_trainer_loss(smoke, splits, tmp_path):
    from she_lib.sft import sft_trainer, weighted_token_loss

    rows = labelled_rows(splits["train"], 2, 1, seed=0)
    rows["labels"] = [[1, -1, 1, 1, 1], *rows["labels"].tolist()[1:]]  # one undecided step for certain
    ds = build_genrm_dataset(rows, filler="unknown")
    trainer = sft_trainer(smoke, fast(smoke).sft_config(smoke.order), ds, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ds))])
    trainer.token_weights = {11798: 3.0, 6552: 0.0}
    loss = trainer.compute_loss(trainer.model, batch)
    labels = batch["labels"]
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    w = torch.where(labels == 11798, 3.0, torch.where(labels == 6552, 0.0, 1.0))
    assert (labels == 6552).any() and (labels == 11798).any()
    assert loss.item() == pytest.approx(weighted_token_loss(logits, labels, w).item(), rel=1e-5)
    unweighted = weighted_token_loss(logits, labels, torch.ones_like(w, dtype=torch.float))
    assert abs(loss.item() - unweighted.item()) > 1e-3  # the weights changed the loss


# ------------------------------------------------------------------------------------------ scoring
def test_teacher_forced_positions_are_the_training_positions(smoke, splits, tmp_path, tiny_policy):
    from she_lib.sft import sft_trainer

    rows = labelled_rows(splits["train"], 2, 1, seed=0)
    ds = build_genrm_dataset(rows, filler="unknown")
    trainer = sft_trainer(smoke, fast(smoke).sft_config(smoke.order), ds, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ds))])
    genrm = GenRM(tiny_policy.model, tiny_policy.tokenizer)
    for i, r in enumerate(rows.to_dict("records")):
        seq = genrm.input_ids(r, r["rationale"])
        prompt = len(seq) - len(genrm.suffix)
        want = [6552 if v < 0 else genrm.ids[0] if v else genrm.ids[1] for v in r["labels"]]
        assert batch["input_ids"][i, :prompt].tolist() == seq[:prompt]
        assert [batch["labels"][i, prompt + j].item() for j in genrm.at] == want  # trained exactly there
        assert (batch["labels"][i, :prompt] == -100).all()


def test_scores_are_probabilities_batch_invariant_and_match_a_full_forward(splits, tiny_policy):
    rows = labelled_rows(splits["validation"], 3, 1, seed=1)
    genrm = GenRM(tiny_policy.model, tiny_policy.tokenizer, batch_size=8)
    s = genrm.score(rows, rows["rationale"].tolist())
    assert s.shape == (len(rows), len(STEPS)) and ((s > 0) & (s < 1)).all()
    one = np.vstack([GenRM(tiny_policy.model, tiny_policy.tokenizer, batch_size=1).score([r], [r["rationale"]])
                     for r in rows.to_dict("records")])
    np.testing.assert_allclose(s, one, atol=1e-5)  # left padding changes nothing
    r = rows.iloc[0]
    ids = torch.tensor([genrm.input_ids(r, r["rationale"])])
    with torch.no_grad():
        logits = tiny_policy.model(input_ids=ids).logits[0]
    start = ids.shape[1] - len(genrm.suffix)
    manual = [torch.softmax(logits[start + j - 1, genrm.ids], -1)[0].item() for j in genrm.at]
    np.testing.assert_allclose(s[0], manual, atol=1e-5)
    assert genrm.score([], []).shape == (0, len(STEPS))


def test_scores_of_a_bf16_model_are_not_rounded_to_its_logits(splits, tiny_policy):
    """A bf16 model's logits are rounded to its grid (0.125 near 16-32); the scorer takes the two verdict logits in
    fp32 from the LM head's input h: softmax(h . w_correct, h . w_incorrect). Here both verdict rows share a large
    component, so both logits are large and P read from the rounded logits is far off."""
    rows = labelled_rows(splits["validation"], 3, 1, seed=1)
    ids = GenRM(tiny_policy.model, tiny_policy.tokenizer).ids
    model = bf16_with_large_logits(tiny_policy.model, ids)
    head = model.get_output_embeddings()
    genrm = GenRM(model, tiny_policy.tokenizer)
    s = genrm.score(rows, rows["rationale"].tolist())
    r = rows.iloc[0]
    seq = genrm.input_ids(r, r["rationale"])
    seen = []
    hook = head.register_forward_pre_hook(lambda mod, args: seen.append(args[0][0].float()))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0].float()
    hook.remove()
    at = [len(seq) - len(genrm.suffix) + j - 1 for j in genrm.at]
    exact = torch.softmax(seen[0][at] @ head.weight[ids].detach().float().T, -1)[:, 0].numpy()
    rounded = torch.softmax(logits[at][:, ids], -1)[:, 0].numpy()
    np.testing.assert_allclose(s[0], exact, atol=1e-6)
    assert logits[at][:, ids].abs().min() > 16 and np.abs(rounded - exact).max() > 0.02  # what bf16 logits gave


# ------------------------------------------------------------------------------------------ training
def test_train_resume_reuse_and_load(smoke, splits, tiny_policy):
    rows = labelled_rows(splits["train"], 8, 2, seed=0)
    cfg = fast(smoke, max_steps=4, save_steps=2, per_device_batch_size=4)
    run = train_genrm(smoke, cfg, rows, name="genrm_part", callbacks=[StopAt(2)])
    info = json.loads((run / "run.json").read_text())
    assert info["global_step"] == 2 and not info["finished"] and info["kind"] == "genrm"
    run = train_genrm(smoke, cfg, rows, name="genrm_part")
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from"] == "checkpoint-2" and info["global_step"] == 4 and info["finished"]
    assert info["train_rows"] == len(decided(rows)) == 16 and info["rows_by_origin"]["teacher"] == 8
    stamp = (run / "run.json").stat().st_mtime_ns
    assert train_genrm(smoke, cfg, rows, name="genrm_part") == run and (run / "run.json").stat().st_mtime_ns == stamp
    genrm = GenRM.load(run, smoke, cfg)
    held = labelled_rows(splits["validation"], 2, 1, seed=1)
    s = genrm.score(held, held["rationale"].tolist())
    assert s.shape == (len(held), 5) and ((s >= 0) & (s <= 1)).all()
    base = GenRM(tiny_policy.model, tiny_policy.tokenizer).score(held, held["rationale"].tolist())
    assert not np.array_equal(s, base)  # the trained adapter was loaded: not the base model's scores


# ------------------------------------------------------------------------------------------ evaluation
def test_step_metrics_by_hand():
    m = step_metrics([[1, 0, 1, -1, 1]], [[.9, .2, .4, .5, .7]], threshold=0.5, bins=10)
    # labelled steps y = 1 0 1 1, p = .9 .2 .4 .7, predicted 1 0 0 1: accuracy 3/4; incorrect class: TP 1, FP 1, FN 0
    assert m["n_steps"] == 4 and m["step_accuracy"] == .75 and m["step_f1"] == pytest.approx(2 / 3)
    assert m["step_auroc"] == 1.0  # the one incorrect step has the lowest P(correct)
    # AUROC by hand: incorrect steps p = .2, .6; correct p = .5, .9: P(incorrect ranked below) = 3 of 4 pairs
    assert step_metrics([[0, 0, 1, 1, -1]], [[.2, .6, .5, .9, .1]])["step_auroc"] == pytest.approx(.75)
    assert m["ece"] == pytest.approx((.1 + .2 + .6 + .3) / 4)  # one step per bin: mean |y - p|
    assert m["brier"] == pytest.approx((.01 + .04 + .36 + .09) / 4)
    assert m["per_step_accuracy"] == {"query": 1.0, "product": 1.0, "type": 0.0, "judge": 1.0}
    assert m["calibration"]["prob_pred"] == pytest.approx([.2, .4, .7, .9])
    assert m["calibration"]["prob_true"] == [0, 1, 1, 1]
    assert step_metrics([[-1] * 5], [[.5] * 5]) == {"n_steps": 0}


def test_threshold_tuned_for_f1_on_incorrect():
    # y = 1 1 0 0 (steps of one rationale, one undecided), P(correct) .9 .6 .4 .55: t in (.55, .6) catches both
    # incorrect steps and no correct one (F1 1); the midpoint .575 is the candidate
    assert tune_threshold([[1, 1, 0, 0, -1]], [[.9, .6, .4, .55, .0]]) == pytest.approx(.575)
    assert tune_threshold([[1, 1, -1, -1, -1]], [[.9, .6, 0, 0, 0]]) == 0.5  # one verdict only


def test_undecided_sample_prints_the_verdicts():
    held = pd.DataFrame({"origin": ["policy", "policy", "teacher"], "labels": [[1, -1, 0, 1, 1], [1] * 5, [1] * 5],
                         "query": ["mug", "cup", "pen"], "title": ["Blue Mug"] * 3, "label": ["Exact"] * 3,
                         "rationale": ["<grade>Exact</grade>"] * 3})
    md = undecided_sample(held, np.full((3, 5), .25))
    assert "1 of 1 held-out policy" in md and "human grade: **Exact**" in md
    assert "| product | - | 0.25 |" in md and "| type | 0 | 0.25 |" in md and "cup" not in md


def test_results_merge_into_metrics_json(smoke, tmp_path):
    from pathlib import Path

    results = Path(smoke.results_dir)
    results.mkdir(parents=True)
    (results / "metrics.json").write_text(json.dumps({"sft": {"macro_f1": 0.5}}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"train_rows": 16, "seconds": 1.0}))
    metrics = {"step_accuracy": .8, "step_f1": .5, "ece": .1,
               "calibration": {"prob_pred": [.2, .8], "prob_true": [.1, .9]}}
    exam = {"verifier_coverage": .9, "agreement": .7, "verifier_seconds_per_1000": .5}
    save_genrm_results(smoke, metrics, exam, run, "base")
    data = json.loads((results / "metrics.json").read_text())
    assert data["sft"] == {"macro_f1": 0.5}
    assert {k: data["genrm"][k] for k in ("step_accuracy", "step_f1", "verifier_coverage", "agreement")} == \
        {"step_accuracy": .8, "step_f1": .5, "verifier_coverage": .9, "agreement": .7}
    assert (results / "figures" / "03_genrm_calibration.png").stat().st_size > 1000
    assert json.loads((results / "genrm_report.json").read_text())["examiner"]["agreement"] == .7


def test_cli_end_to_end_on_smoke(tmp_path, monkeypatch, capsys):
    from she_lib.config import PROFILES
    from she_lib.genrm import main

    monkeypatch.setattr("she_lib.config.PROFILES", {**PROFILES, "smoke": PROFILES["smoke"].replace(
        runs_dir=str(tmp_path / "runs"), processed_dir=str(tmp_path / "processed"),
        results_dir=str(tmp_path / "results"))})
    assert main(["--profile", "smoke"]) == 0
    assert '"step_accuracy"' in capsys.readouterr().out
    data = json.loads((tmp_path / "results" / "metrics.json").read_text())["genrm"]
    assert 0 <= data["step_accuracy"] <= 1 and 0 <= data["step_f1"] <= 1 and data["split"] == "validation"
    assert 0 < data["verifier_coverage"] <= 1 and data["policy_source"] == "base"
    held_ids = set(pd.read_json(next((tmp_path / "runs" / "samples" / "base").glob("genrm_validation_*.jsonl")), lines=True)["example_id"])
    test_ids = set(pd.read_parquet(tmp_path / "processed" / "test.parquet")["example_id"])
    assert held_ids and not held_ids & test_ids
    assert json.loads((tmp_path / "runs" / "genrm" / "run.json").read_text())["finished"]
    # a named variant reports under results/<name>/ and leaves the main GenRM's report as it was
    before = (tmp_path / "results" / "metrics.json").read_text()
    assert main(["--profile", "smoke", "--name", "genrm_variant", "--policy-errors"]) == 0
    assert (tmp_path / "results" / "metrics.json").read_text() == before
    assert json.loads((tmp_path / "results" / "genrm_variant" / "metrics.json").read_text())["genrm"]["split"] == \
        "validation"
    report = json.loads((tmp_path / "results" / "genrm_variant" / "genrm_report.json").read_text())
    assert {f"corrupt:{k}" for k in KINDS + POLICY_KINDS} <= set(report["metrics"]["per_origin"])
    assert report["run"]["config"]["corruption_kinds"] == list(KINDS + POLICY_KINDS)
    for flag in (["--epochs", "2"], ["--policy-errors"]):  # a changed budget or data needs a name of its own
        with pytest.raises(SystemExit):
            main(["--profile", "smoke", *flag])
