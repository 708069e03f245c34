"""pass@k (exact), sample labelling, pair building (hand-made cases), shared-prefix sampling, resumable
sampling, and the DPO baseline end to end on the smoke profile (SFT run -> samples -> pairs -> DPO adapter)."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from she_lib.config import get_profile
from she_lib.dpo import DPOBaselineConfig, build_pairs, train_dpo
from she_lib.inference import generate
from she_lib.labels import get_scale
from she_lib.rationales import teacher_rationale
from she_lib.sampling import cache_covers, label_samples, pass_at_k, pass_at_report, sample_rationales

ESCI = get_scale("esci")


# ----------------------------------------------------------------------------------------------- pass@k
def test_pass_at_k_hand_computed():
    good = [0, 1, 2, 4]  # n = 4 samples each
    assert pass_at_k(good, 4, 1) == pytest.approx((0 + .25 + .5 + 1) / 4)
    # k=2: c=1 -> 1 - C(3,2)/C(4,2) = 1/2; c=2 -> 1 - C(2,2)/C(4,2) = 5/6; c=0 -> 0; c=4 -> 1
    assert pass_at_k(good, 4, 2) == pytest.approx((0 + 1 / 2 + 5 / 6 + 1) / 4)
    assert pass_at_k(good, 4, 4) == pytest.approx(3 / 4)  # any good sample among all four
    with pytest.raises(ValueError):
        pass_at_k(good, 4, 5)
    with pytest.raises(ValueError):
        pass_at_k([5], 4, 1)


def test_pass_at_report_needs_equal_sample_counts():
    s = pd.DataFrame({"example_id": ["a", "a", "b", "b"], "good": [True, False, False, False]})
    rep = pass_at_report(s)
    assert rep == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5), "n": 2, "examples": 2}
    with pytest.raises(ValueError, match="same number"):
        pass_at_report(s.iloc[:3])


# ----------------------------------------------------------------------------------------------- labels and pairs
def test_label_samples(splits):
    ex = splits["train"].iloc[0]
    wrong = next(w for w in ESCI.words if w != ex["label"])
    right = teacher_rationale(ex)
    texts = [[right, right.replace(f"<grade>{ex['label']}</grade>", f"<grade>{wrong}</grade>"), "no tags at all"]]
    s = label_samples(splits["train"].iloc[:1], texts, ESCI)
    assert s["good"].tolist() == [True, False, False]
    assert s["grade"].tolist()[:2] == [ex["label"], wrong] and pd.isna(s["grade"].iloc[2])
    assert s["sample"].tolist() == [0, 1, 2]


def _samples(rows):
    return pd.DataFrame([{"example_id": e, "sample": j, "completion": c, "grade": g, "well_formed": g is not None,
                          "good": good} for e, j, c, g, good in rows])


def test_build_pairs_cases(splits):
    prof = get_profile("smoke")
    df = splits["train"].iloc[:4]
    a, b, c, d = df["example_id"]
    s = _samples([
        (a, 0, "bad-a0", "Irrelevant", False), (a, 1, "good-a1", "Exact", True),  # mixed: policy pair
        (b, 0, "good-b0", "Exact", True), (b, 1, "good-b1", "Exact", True),  # all good: no pair
        (c, 0, "junk-c0", None, False), (c, 1, "bad-c1", "Exact", False),  # none good: teacher chosen
        # d has no samples: not counted
    ])
    pairs, rep = build_pairs(df, s, prof)
    assert rep == {"examples": 3, "pairs": 2, "chosen_policy": 1, "chosen_teacher": 1, "skipped_all_good": 1,
                   "skipped_no_good": 0, "rejected_unparsable": 1}
    pa, pc = pairs.iloc[0], pairs.iloc[1]
    assert (pa["example_id"], pa["chosen"][0]["content"], pa["rejected"][0]["content"]) == (a, "good-a1", "bad-a0")
    assert pc["chosen"][0]["content"] == teacher_rationale(df.iloc[2], prof.order) and pc["chosen_source"] == "teacher"
    assert pc["rejected"][0]["content"] == "junk-c0"
    assert pa["prompt"][0]["role"] == "system" and pa["chosen"][0]["role"] == "assistant"
    _, rep = build_pairs(df, s, prof, teacher_fallback=False)
    assert (rep["pairs"], rep["skipped_no_good"]) == (1, 1)


# ----------------------------------------------------------------------------------------------- sampling
def test_shared_prefix_sampling_equals_plain_generate(tiny_policy):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    prompts = ["a short prompt", "a much longer prompt with quite a few more words in it", "a"]
    out = []
    for share in (False, True):
        torch.manual_seed(3)
        out.append(generate(m, tok, prompts, batch_size=2, max_new_tokens=6, do_sample=True, num_return_sequences=3,
                            progress=False, share_prefix=share))
    assert out[0] == out[1] and [len(x) for x in out[1]] == [3, 3, 3]


def test_sampling_resumes_with_the_same_samples(tiny_policy, splits, tmp_path):
    prof = get_profile("smoke")
    df = splits["train"].iloc[:4]
    kw = dict(n=2, max_new_tokens=4, batch_size=2, seed=5, chunk=2, progress=False)
    full = sample_rationales(tiny_policy.model, tiny_policy.tokenizer, df, prof, cache=tmp_path / "a.jsonl", **kw)
    # an interrupted run: only the first chunk reached the cache, then the job restarts on the whole frame
    sample_rationales(tiny_policy.model, tiny_policy.tokenizer, df.iloc[:2], prof, cache=tmp_path / "b.jsonl", **kw)
    resumed = sample_rationales(tiny_policy.model, tiny_policy.tokenizer, df, prof, cache=tmp_path / "b.jsonl", **kw)
    assert len(full) == 8 and full["completion"].tolist() == resumed["completion"].tolist()
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 4  # one line per example, none repeated
    # a complete cache covers the frame: no model is needed to read it back
    assert not cache_covers(tmp_path / "none.jsonl", df) and not cache_covers(None, df)
    half = tmp_path / "half.jsonl"
    half.write_text("".join(l + "\n" for l in (tmp_path / "b.jsonl").read_text().splitlines()[:2]))
    assert cache_covers(half, df.iloc[:2]) and not cache_covers(half, df) and cache_covers(tmp_path / "b.jsonl", df)
    again = sample_rationales(None, None, df, prof, cache=tmp_path / "b.jsonl", **kw)
    assert again["completion"].tolist() == full["completion"].tolist()


# ----------------------------------------------------------------------------------------------- end to end
def test_dpo_from_sft_end_to_end(smoke, splits, trained_sft):
    from she_lib.evaluate import evaluate_run
    from she_lib.modeling import load_run

    sft = trained_sft
    run = train_dpo(smoke, sft, splits=splits, progress=False)
    info = json.loads((run / "run.json").read_text())
    cfg = DPOBaselineConfig.for_profile(smoke)
    assert info["kind"] == "dpo" and (run / info["init_adapter"]).resolve() == sft.resolve() and info["global_step"] == cfg.max_steps
    assert info["pass_at"]["n"] == cfg.n_samples and info["pass_at"]["examples"] == cfg.sample_limit
    assert info["pairs"]["pairs"] + info["pairs"]["skipped_all_good"] == cfg.sample_limit
    (cache,) = (Path(smoke.runs_dir) / "samples").glob(f"sft_*/n{cfg.n_samples}_*.jsonl")  # the shared cache of SFT samples
    assert len(cache.read_text().splitlines()) == cfg.sample_limit
    assert json.loads((run / "pairs_report.json").read_text())["pairs"] == info["pairs"]

    # the DPO model = base + SFT adapter + DPO adapter, merged; it differs from the SFT model
    w = lambda p: p.model.model.layers[0].self_attn.q_proj.weight  # noqa: E731
    assert not torch.equal(w(load_run(run, smoke)), w(load_run(sft, smoke)))
    assert train_dpo(smoke, sft, splits=splits, progress=False) == run  # finished: reused, not retrained
    (m,) = evaluate_run(run, smoke, splits["test"].head(6), modes=("first_token",)).values()
    assert m["n_examples"] == 6 and m["run"]["kind"] == "dpo"
