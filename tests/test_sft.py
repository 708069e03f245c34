"""CoT SFT (she_lib.sft) on the smoke profile: data format, completion-only loss, training, saving, resuming."""
import json

import pytest
import torch

from she_lib.labels import get_scale
from she_lib.schema import parse, render_prompt, system_prompt
from she_lib.sft import CoTSFTConfig, build_sft_dataset, sft_args, sft_trainer, train_sft
from callbacks import StopAt


def fast_config(smoke, **overrides):
    """A few fp32 steps on 8 training pairs, no validation, no checkpoints unless asked."""
    base = dict(train_limit=8, eval_limit=0, per_device_batch_size=2, logging_steps=1, save_steps=1000,
                warmup_ratio=0.0, bf16=False)
    return CoTSFTConfig.for_profile(smoke, **{**base, **overrides})


# ------------------------------------------------------------------------------------------- config
def test_profile_defaults_and_trainer_args(smoke, tmp_path):
    cfg = CoTSFTConfig.for_profile(smoke)
    assert (cfg.max_steps, cfg.bf16, cfg.order, cfg.max_length) == (4, False, "grade_first", smoke.max_seq_length)
    cpu, full = CoTSFTConfig.for_profile("cpu"), CoTSFTConfig.for_profile("cpu-full")
    assert cpu.train_limit and cpu.max_steps == -1 and cpu.bf16 == "auto" and not cpu.gradient_checkpointing
    assert full.train_limit and full.epochs >= 1 and full.eval_steps > full.save_steps
    assert CoTSFTConfig.for_profile("smoke", order="steps_first", learning_rate=1e-3).order == "steps_first"

    args = sft_args(cfg, tmp_path, has_eval=True)
    assert args.use_cpu and not args.bf16 and not args.fp16 and not args.gradient_checkpointing
    assert args.completion_only_loss and not args.packing and args.report_to in ("none", [], ["none"])
    assert args.eval_strategy == "steps" and args.max_steps == 4 and args.seed == cfg.seed
    from she_lib.modeling import cpu_has_fast_bf16

    assert sft_args(cpu, tmp_path, has_eval=False).bf16 == cpu_has_fast_bf16()  # "auto" on this CPU


# ------------------------------------------------------------------------------------------- data
def test_dataset_is_conversational_prompt_completion(splits):
    scale, df = get_scale("esci"), splits["train"].head(4)
    for order in ("grade_first", "steps_first"):
        ds = build_sft_dataset(df, "esci", order)
        assert ds.column_names == ["prompt", "completion"] and len(ds) == 4
        for row, label in zip(ds, df["label"]):
            assert [m["role"] for m in row["prompt"]] == ["system", "user"]
            assert row["prompt"][0]["content"] == system_prompt(scale, order)
            (answer,) = row["completion"]
            assert answer["role"] == "assistant"
            parsed = parse(answer["content"], scale)
            assert parsed.well_formed and parsed.grade == label and parsed.order == order
    given = df.assign(rationale="<grade>Exact</grade>")  # a rationale column (e.g. an LLM teacher's) is used as is
    assert build_sft_dataset(given, scale)[0]["completion"][0]["content"] == "<grade>Exact</grade>"
    with pytest.raises(ValueError, match="unknown order"):
        build_sft_dataset(df, scale, "grade_last")


def test_completion_only_mask_and_loss(smoke, splits, tmp_path):
    """Collated labels are -100 on the prompt (exactly the inference prompt) and on padding, and equal the tokens
    of rationale + <|im_end|> (+ the template's newline) on the completion; TRL's loss is their mean NLL."""
    scale, df = get_scale("esci"), splits["train"].head(3)
    ds = build_sft_dataset(df, scale)
    trainer = sft_trainer(smoke, fast_config(smoke), ds, tmp_path)
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ds))])
    ids, labels = batch["input_ids"], batch["labels"]
    for i in range(len(ds)):
        prompt = tok(render_prompt(tok, df.iloc[i], scale), add_special_tokens=False).input_ids
        completion = tok(ds[i]["completion"][0]["content"] + "<|im_end|>\n", add_special_tokens=False).input_ids
        n, pad = len(prompt) + len(completion), ids.shape[1] - len(prompt) - len(completion)
        assert ids[i, :n].tolist() == prompt + completion
        assert labels[i].tolist() == [-100] * len(prompt) + completion + [-100] * pad
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * pad
        trained = labels[i][labels[i] != -100].tolist()
        assert tok.decode(trained).startswith("<grade>") and tok.eos_token_id in trained
        assert trained[-2] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")

    model = trainer.model
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()  # TRL's fused LM head (CPU fallback)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    target, mask = labels[:, 1:], labels[:, 1:] != -100
    nll = -logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    assert loss == pytest.approx((nll * mask).sum().item() / mask.sum().item(), rel=1e-4)
    full_mask = batch["attention_mask"][:, 1:].bool()  # the loss over every token would differ
    assert abs(loss - (nll * full_mask).sum().item() / full_mask.sum().item()) > 1e-3


# ------------------------------------------------------------------------------------------- training
def test_loss_goes_down_on_a_tiny_repeated_set(smoke, splits):
    cfg = fast_config(smoke, max_steps=20, per_device_batch_size=4, learning_rate=1e-2, lr_scheduler="constant")
    run = train_sft(smoke, cfg, splits, name="overfit")
    log = [e for e in json.loads((run / "train_log.json").read_text()) if "loss" in e]
    losses, accuracy = [e["loss"] for e in log], [e["mean_token_accuracy"] for e in log]
    assert len(losses) == 20
    # The tiny model's tied LM head is frozen and its logits start near uniform (loss ~ log 49152 = 10.8), so the
    # loss falls slowly while the completion tokens' top-1 accuracy climbs fast.
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    assert accuracy[0] < 0.05 and min(accuracy[-3:]) > 0.3, accuracy


def test_saved_run_evaluates(smoke, splits):
    from she_lib.evaluate import evaluate_run

    run = train_sft(smoke, CoTSFTConfig.for_profile(smoke), splits)  # the smoke defaults: 4 steps, 8 eval pairs
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "sft" and info["profile"] == "smoke" and info["order"] == "grade_first"
    assert info["config"]["max_steps"] == 4 and info["global_step"] == 4 and info["train_examples"] == 16
    assert info["seconds"] > 0 and info["tokens_per_second"] > 0 and info["eval_loss"] > 0
    log = json.loads((run / "train_log.json").read_text())
    assert any("loss" in e for e in log) and any("eval_loss" in e for e in log)
    assert (run / "adapter_config.json").exists() and (run / "tokenizer_config.json").exists()
    assert (run / "checkpoints" / "checkpoint-4").is_dir()

    df = splits["test"].head(8)
    out = evaluate_run(run, smoke, df, modes=("first_token",))
    (metrics,) = out.values()
    assert metrics["n_examples"] == 8 and 0 <= metrics["accuracy"] <= 1 and metrics["scoring"] == "first_token"


def test_resume_matches_an_uninterrupted_run(smoke, splits):
    from safetensors.torch import load_file

    n = 3  # mid-epoch (4 steps of 2 make an epoch), so resuming must skip the batches already seen
    cfg = fast_config(smoke, max_steps=2 * n, save_steps=n, learning_rate=1e-3, lr_scheduler="linear")
    full = train_sft(smoke, cfg, splits, name="full")
    part = train_sft(smoke, cfg, splits, name="part", callbacks=[StopAt(n)])
    info = json.loads((part / "run.json").read_text())
    assert info["global_step"] == n and info["max_steps"] == 2 * n and not info["finished"]
    part = train_sft(smoke, cfg, splits, name="part")
    info = json.loads((part / "run.json").read_text())
    assert info["resumed_from"] == f"checkpoint-{n}" and info["global_step"] == 2 * n and info["finished"]

    def losses(run):
        return {e["step"]: e["loss"] for e in json.loads((run / "train_log.json").read_text()) if "loss" in e}

    assert losses(part) == pytest.approx(losses(full), rel=1e-5) and len(losses(full)) == 2 * n
    a, b = load_file(full / "adapter_model.safetensors"), load_file(part / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    start = load_file(part / "checkpoints" / f"checkpoint-{n}" / "adapter_model.safetensors")
    assert any(not torch.equal(start[k], b[k]) for k in b)  # the second half did train

    # Re-running a finished run with the same config reuses it (resuming from the final checkpoint would make
    # transformers train one step past max_steps); another config trains again.
    stamp = (part / "run.json").stat().st_mtime_ns
    assert train_sft(smoke, cfg, splits, name="part") == part and (part / "run.json").stat().st_mtime_ns == stamp
    # ... and the checkpoints of another config are dropped, never resumed: a changed budget starts afresh
    other = fast_config(smoke, max_steps=2 * n, save_steps=n, learning_rate=5e-4, lr_scheduler="linear")
    info = json.loads((train_sft(smoke, other, splits, name="part") / "run.json").read_text())
    assert info["resumed_from"] is None and info["finished"] and info["config"]["learning_rate"] == 5e-4


def test_bf16_autocast_step_keeps_fp32_adapter(smoke, splits):
    """The cpu profile's "auto" precision on this CPU: bf16 autocast over fp32 weights; the adapter stays fp32."""
    from safetensors.torch import load_file

    run = train_sft(smoke, fast_config(smoke, max_steps=2, bf16=True), splits, name="bf16")
    info = json.loads((run / "run.json").read_text())
    assert info["bf16"] and info["finished"] and 0 < info["train_loss"] < 20
    assert {t.dtype for t in load_file(run / "adapter_model.safetensors").values()} == {torch.float32}


def test_sft_cli_on_smoke(tmp_path, monkeypatch, capsys):
    from she_lib.config import PROFILES
    from she_lib.sft import main

    monkeypatch.setattr("she_lib.config.PROFILES", {**PROFILES, "smoke": PROFILES["smoke"].replace(
        runs_dir=str(tmp_path / "runs"), processed_dir=str(tmp_path / "processed"))})
    assert main(["--profile", "smoke", "--name", "cli", "--evaluate", "first_token"]) == 0
    out = capsys.readouterr().out
    assert '"kind": "sft"' in out and "cli_first_token" in out
    assert (tmp_path / "runs" / "cli" / "adapter_config.json").exists()


def test_balance_classes_hand_computed():
    """Counts (8, 4, 2, 2) of N = 16; a = 0.5: shares ~ sqrt(n) = (2.828, 2, 1.414, 1.414), sum 7.657, so
    m = 16 * share = (5.91, 4.18, 2.95, 2.95) -> (6, 4, 3, 3); a = 1: (4, 4, 4, 4); a = 0: unchanged."""
    import pandas as pd

    from she_lib.sft import balance_classes

    df = pd.DataFrame({"label": ["E"] * 8 + ["S"] * 4 + ["C"] * 2 + ["I"] * 2, "i": range(16)})
    half = balance_classes(df, 0.5, seed=1)
    assert half["label"].value_counts().to_dict() == {"E": 6, "S": 4, "C": 3, "I": 3}
    assert set(half.loc[half["label"] == "C", "i"]) == {12, 13}  # both C rows kept, one repeated
    assert half.loc[half["label"] == "E", "i"].is_unique  # E is subsampled without replacement
    assert balance_classes(df, 1.0)["label"].value_counts().to_dict() == {"E": 4, "S": 4, "C": 4, "I": 4}
    assert balance_classes(df, 0.0) is df
    with pytest.raises(ValueError, match="class_balance must be in"):
        balance_classes(df, 1.5)


def test_grade_positions_and_weighted_loss_hand_computed():
    """Labels [-100, 7, 8, 3, 9, 7, 8, 5] with the tag (7, 8): grade tokens at positions 3 and 7. With uniform
    logits over V = 4 every CE is log 4, so any weighting gives log 4; with one position made certain (CE 0) the
    weighted mean is sum(a * CE) / sum(a) by hand."""
    import math

    from she_lib.sft import grade_positions, weighted_token_loss

    labels = torch.tensor([[-100, 7, 8, 3, 9, 7, 8, 5]])
    mask = grade_positions(labels, [7, 8])
    assert mask.tolist() == [[False, False, False, True, False, False, False, True]]
    assert not grade_positions(labels[:, :2], [7, 8]).any()
    small = torch.tensor([[-100, 1, 2, 3]])  # V = 4 below; positions 1..3 supervised, 3 is the "grade"
    w = torch.where(torch.tensor([[False, False, False, True]]), 5.0, 1.0)
    logits = torch.zeros(1, 4, 4)
    assert weighted_token_loss(logits, small, w).item() == pytest.approx(math.log(4))
    logits[0, 2, 3] = 100.0  # position 2 predicts label 3 (the grade) with certainty: CE 0 there
    # targets 1, 2 (weight 1, CE log 4 each) and 3 (weight 5, CE 0): (2 log 4 + 0) / 7
    assert weighted_token_loss(logits, small, w).item() == pytest.approx(2 * math.log(4) / 7, abs=1e-6)


def test_grade_weighted_sft_with_checkpoint_chosen_by_grade_f1(smoke, tmp_path):
    """End to end on the tiny model: weight 10 on the grade token trains through CoTSFTTrainer.compute_loss,
    eval_grade_macro_f1 is logged at each evaluation and the best checkpoint by it is the one kept."""
    cfg = CoTSFTConfig.for_profile(smoke, max_steps=4, save_steps=2, grade_weight=10.0, grade_eval_limit=8,
                                   select_by_grade_f1=True)
    run = train_sft(smoke, cfg, name="sft_weighted")
    log = json.loads((run / "train_log.json").read_text())
    f1s = [e["eval_grade_macro_f1"] for e in log if "eval_grade_macro_f1" in e]
    assert len(f1s) >= 2 and all(0.0 <= f <= 1.0 for f in f1s)
    assert all(e["loss"] > 0 for e in log if "loss" in e)
    with pytest.raises(ValueError, match="select_by_grade_f1 needs"):
        train_sft(smoke, CoTSFTConfig.for_profile(smoke, select_by_grade_f1=True), name="bad")


@pytest.mark.parametrize("grade_weight", [1.0, 5.0])
def test_shared_prompt_prefix_gives_the_full_batch_loss_and_gradients(smoke, splits, tmp_path, grade_weight):
    """The batch's common prompt prefix run once (sft.on_shared_prefix) leaves TRL's loss (and the grade-weighted
    one) and every LoRA gradient as the full batch gives them."""
    from she_lib.sft import MIN_SHARED_PREFIX, shared_prefix_length

    ds = build_sft_dataset(splits["train"].head(4), get_scale("esci"))
    grads, losses = {}, {}
    for share in (False, True):
        cfg = fast_config(smoke, share_prompt_prefix=share, grade_weight=grade_weight)
        trainer = sft_trainer(smoke, cfg, ds, tmp_path / str(share))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ds))])
        p = shared_prefix_length(batch["input_ids"], batch["labels"])
        assert p >= MIN_SHARED_PREFIX and (batch["labels"][:, :p + 1] == -100).all()
        trainer.model.train()
        for prm in trainer.model.parameters():  # LoRA B starts at 0: give the adapter a state that matters
            if prm.requires_grad:
                torch.manual_seed(0)
                prm.data.normal_(0, 0.02)
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        losses[share] = loss.item()
        grads[share] = {n: prm.grad.clone() for n, prm in trainer.model.named_parameters() if prm.requires_grad}
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for n, g in grads[False].items():
        torch.testing.assert_close(grads[True][n], g, rtol=1e-4, atol=1e-6)
