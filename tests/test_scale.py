"""Scale-out.

* The shipped ``accelerate`` configs parse and build the SFT trainer: the environment a launched script sees is
  computed with accelerate's own launcher code (:func:`launch_env`), so each config is read exactly as
  ``accelerate launch --config_file`` reads it.
* SFT under ``accelerate launch`` with 2 CPU processes (DDP over gloo) matches the equivalent single-process run,
  and only rank 0 writes; the sampling stages (DPO, GenRM, GRPO, SRPO, AGRL) finish under one such launch, and
  only rank 0 writes.
* The hub path of the gpu/colab profiles loads a local folder standing in for the hub.
* The fast text normalisation of the loaders (data at scale) agrees with its plain definition.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from she_lib.config import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs" / "accelerate"
# What matters in each config: how it distributes, how many processes, and the sharding settings.
EXPECTED = {
    "one_gpu": dict(distributed_type="NO", num_processes=1, use_cpu=False),
    "multi_gpu_ddp": dict(distributed_type="MULTI_GPU", num_processes=8, use_cpu=False),
    "deepspeed_zero2": dict(distributed_type="DEEPSPEED", num_processes=8, use_cpu=False,
                            deepspeed_config=dict(zero_stage=2, offload_optimizer_device="none")),
    "deepspeed_zero3": dict(distributed_type="DEEPSPEED", num_processes=8, use_cpu=False,
                            deepspeed_config=dict(zero_stage=3, zero3_init_flag=True, zero3_save_16bit_model=True)),
    "fsdp": dict(distributed_type="FSDP", num_processes=8, use_cpu=False,
                 fsdp_config=dict(fsdp_version=2, fsdp_auto_wrap_policy="TRANSFORMER_BASED_WRAP",
                                  fsdp_state_dict_type="FULL_STATE_DICT")),
    # MULTI_GPU + use_cpu: the launcher starts 2 local processes (torchrun), which set up as MULTI_CPU over gloo
    "cpu_2proc": dict(distributed_type="MULTI_GPU", num_processes=2, use_cpu=True, main_process_port=0),
}


def launch_env(config_file) -> dict[str, str]:
    """The environment variables ``accelerate launch --config_file config_file`` adds for the training script
    (accelerate 1.15's launcher functions; ``_validate_launch_command`` is what ``launch_command`` calls first)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import (prepare_deepspeed_cmd_env, prepare_multi_gpu_env,
                                         prepare_simple_launcher_cmd_env)

    parsed = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, _ = _validate_launch_command(parsed)
    if args.use_deepspeed:  # as launch_command does before calling the DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        env = prepare_simple_launcher_cmd_env(args)[1]
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


def test_every_shipped_config_is_tested():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(CONFIG_DIR / f"{name}.yaml"))
    assert isinstance(cfg, ClusterConfig) and cfg.compute_environment.value == "LOCAL_MACHINE"
    want = EXPECTED[name]
    assert cfg.distributed_type.value == want["distributed_type"]
    assert cfg.mixed_precision == "no"  # precision comes from the profile's training config, not the launcher
    for key, value in want.items():
        if isinstance(value, dict):
            assert {k: getattr(cfg, key)[k] for k in value} == value, key
        elif key != "distributed_type":
            assert getattr(cfg, key) == value, key


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sft_trainer_builds_under_config(name, smoke, tmp_path, monkeypatch):
    """The SFT trainer is built, and takes a step, with the config's launch environment in one CPU process."""
    env = launch_env(CONFIG_DIR / f"{name}.yaml")
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    kind = EXPECTED[name]["distributed_type"]
    if kind == "DEEPSPEED":
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(EXPECTED[name]["deepspeed_config"]["zero_stage"])
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (GPU machines only: pip install "
                            "deepspeed); its config and launch environment were checked above")
    if kind == "FSDP":
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if kind == "FSDP":  # accelerate builds its FSDP plugin from these variables
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)
        assert plugin.reshard_after_forward is True and plugin.auto_wrap_policy is not None

    from she_lib.data import prepare_splits
    from she_lib.sft import CoTSFTConfig, build_sft_dataset, sft_trainer

    ds = build_sft_dataset(prepare_splits(smoke, write=False)[0]["train"].head(2), smoke.grade_scale)
    cfg = CoTSFTConfig.for_profile(smoke, max_steps=1, per_device_batch_size=2, eval_limit=0, save_steps=1000)
    trainer = sft_trainer(smoke, cfg, ds, tmp_path / "out")
    assert trainer.args.mixed_precision == "no" and not trainer.args.bf16
    # One CPU process: no process group, so accelerate runs it undistributed (FSDP and DDP need several
    # processes, and accelerate enables FSDP on accelerators only; 2-process DDP is tested below).
    assert trainer.accelerator.distributed_type.value == "NO" and not trainer.is_fsdp_enabled
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.state.log_history[0]["loss"] > 0


# ----------------------------------------------------------------------------- 2 processes vs 1
def test_distributed_helpers_outside_a_launch(monkeypatch):
    from she_lib import distributed

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.is_main_process() and distributed.world_size() == 1
    with distributed.main_process_first():
        distributed.wait_for_everyone()  # no process group, no-op
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main_process()


def sft_reference(profile, name: str, world: int):
    """Single-process SFT equivalent to ``python -m she_lib.sft --profile smoke`` on ``world`` processes: the same
    global batch (per-device batch x world), hence the same batches, steps and learning-rate schedule."""
    from she_lib.sft import CoTSFTConfig, train_sft

    cfg = CoTSFTConfig.for_profile(profile)
    return train_sft(profile, dataclasses.replace(cfg, per_device_batch_size=cfg.per_device_batch_size * world),
                     name=name)


def launch(out, *commands, world=2):
    """``accelerate launch`` (2 CPU processes, DDP over gloo) of tests/launched_module.py running ``commands`` (each
    ``[module, *args]``) one after another under ``out``; returns what each rank wrote there (relative paths)."""
    joined = [a for i, c in enumerate(commands) for a in ([] if i == 0 else ["::"]) + list(c)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG_DIR / "cpu_2proc.yaml"),
           str(REPO_ROOT / "tests" / "launched_module.py"), *joined]
    env = {**os.environ, "SHE_TEST_OUT": str(out), "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r: {path for _, path in json.loads((out / "writes" / f"rank{r}.json").read_text())} for r in range(world)}


def assert_finished_on_rank0(out, writes, name):
    """The launched run ``runs/<name>`` finished its steps, and rank 0 wrote it (what Python writes; rank 1's own
    RNG state in checkpoints is written by torch natively); returns its ``run.json``."""
    assert {f"runs/{name}/{f}" for f in ("run.json", "adapter_config.json")} <= writes[0], (name, sorted(writes[0]))
    info = json.loads((out / "runs" / name / "run.json").read_text())
    assert info["finished"] and info["global_step"] == info["max_steps"] > 0, (name, info)
    return info


@pytest.mark.slow  # ~40 s on 2 busy cores: two processes each import the stack and train a few steps
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU test: the single-process reference would run on the GPU")
def test_two_process_sft_matches_one_process_and_only_rank0_writes(smoke, tmp_path):
    from safetensors.torch import load_file

    out, world = tmp_path / "launched", 2
    writes = launch(out, ["she_lib.sft", "--profile", "smoke", "--name", "launched"], world=world)
    assert writes[1] == set(), writes[1]
    info = assert_finished_on_rank0(out, writes, "launched")
    launched = out / "runs" / "launched"
    single = sft_reference(smoke, "single", world)
    ref = json.loads((single / "run.json").read_text())
    assert info["global_step"] == ref["global_step"] and info["train_examples"] == ref["train_examples"]

    # Same global batches, and DDP averages gradients of a loss normalised by the tokens of all ranks
    # (average_tokens_across_devices), so the runs differ only by float32 summation order: different padding
    # lengths and a 2-way all-reduce. That moves losses by ~1e-7 relative; Adam's step lr * m / (sqrt(v) + eps) is
    # insensitive to such a relative change of the gradient, so the adapter weights agree to ~lr * 1e-6.
    def losses(run):
        return {e["step"]: e["loss"] for e in json.loads((run / "train_log.json").read_text()) if "loss" in e}

    assert losses(launched) == pytest.approx(losses(single), rel=1e-5) and len(losses(single)) == info["max_steps"]
    a, b = (load_file(r / "adapter_model.safetensors") for r in (launched, single))
    assert a.keys() == b.keys() and a
    assert max(v.abs().max().item() for k, v in b.items() if "lora_B" in k) > 1e-4  # B starts at 0: it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    # The evaluation loss is not the same statistic: 2 ranks average their 2 per-batch token means, 1 process
    # takes one token mean over the 8 pairs; with near-uniform logits both are ~log(vocab size).
    assert info["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-3)


# The stages that sample (DPO's pairs, GenRM's policy rationales, RL's rollouts): a launched run sees other samples
# than a single process would, so each is checked to run, finish its steps and write on rank 0 only. All of them
# run in one launch (one start of 2 processes, in order), each from the same finished SFT run in runs/sft.
SAMPLING_STAGES = {
    "dpo": ["she_lib.dpo", "--profile", "smoke", "--sft", "{out}/runs/sft", "--name", "launched_dpo"],
    "genrm": ["she_lib.genrm", "--profile", "smoke", "--name", "launched_genrm"],
    **{m: ["she_lib.rl", "--method", m, "--profile", "smoke", "--sft", "{out}/runs/sft", "--name", f"launched_{m}",
           *extra] for m, extra in (("grpo", ["--stage-order", "balanced"]), ("srpo", ["--stage-steps", "3"]),
                                                 ("agrl", []))},
}


@pytest.mark.slow  # ~2 min on 2 busy cores: two processes import the stack once and train the five stages
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU test: launched like the SFT test above, on 2 CPU processes")
def test_two_process_launch_of_every_sampling_stage_and_only_rank0_writes(tmp_path, trained_sft):
    """DPO, GenRM and the three RL methods under ``accelerate launch``, each from a finished smoke SFT run in
    ``runs/sft`` (DPO's and RL's ``--sft``, the GenRM's policy run): each finishes, and rank 1 writes nothing."""
    from she_lib.data import load_splits

    out = tmp_path / "launched"
    shutil.copytree(trained_sft, out / "runs" / "sft")
    load_splits(launched_profile(out))  # the processed splits, as training the SFT run there would have left them
    commands = [[a.format(out=out) for a in args] for args in SAMPLING_STAGES.values()]
    writes = launch(out, *commands)
    assert writes[1] == set(), writes[1]
    for stage, args in SAMPLING_STAGES.items():
        info = assert_finished_on_rank0(out, writes, args[args.index("--name") + 1])
        assert info["kind"] == stage
        if "--stage-order" in args:  # the CLI's curriculum option reaches the prompt set and the run key
            assert info["data"]["config"]["stage_order"] == info["config"]["curriculum"]["stage_order"] == "balanced"
        if "--stage-steps" in args:  # the run's length (smoke: 2 steps) follows the CLI, and its key records it
            assert info["config"]["curriculum"]["stage_steps"] == [3] and info["global_step"] == 3
        if stage != "genrm":  # DPO and RL start from the SFT adapter they were given
            assert (out / "runs" / args[args.index("--name") + 1] / info["init_adapter"]).resolve() == \
                (out / "runs" / "sft").resolve()


def launched_profile(out):
    """The smoke profile as tests/launched_module.py sets it up under ``out``."""
    from she_lib.config import get_profile

    return get_profile("smoke", runs_dir=str(out / "runs"), processed_dir=str(out / "processed"),
                       results_dir=str(out / "results"))


# ----------------------------------------------------------------------------- hub models (gpu / colab profiles)
@pytest.mark.parametrize("profile_name", ["gpu", "colab"])
def test_hub_profile_loads_a_local_folder_standing_in_for_the_hub(profile_name, tiny_policy, tmp_path):
    """``model_source="hub"`` loads ``model_name`` with ``from_pretrained``: a saved tiny model stands in for the hub.
    Then the SFT trainer takes a step on it (the gpu/colab path minus CUDA and Unsloth)."""
    from she_lib.config import get_profile
    from she_lib.data import prepare_splits
    from she_lib.modeling import load_policy, unsloth_available
    from she_lib.sft import CoTSFTConfig, build_sft_dataset, sft_trainer

    hub = tmp_path / "hub" / "tiny-llama"
    tiny_policy.model.save_pretrained(hub)
    tiny_policy.tokenizer.save_pretrained(hub)
    prof = get_profile(profile_name, model_name=str(hub), dtype="float32", runs_dir=str(tmp_path / "runs"),
                       processed_dir=str(tmp_path / "processed"), max_pairs=200, max_pairs_per_query=10)
    assert prof.model_source == "hub" and not prof.is_tiny

    pol = load_policy(prof)
    assert pol.backend == ("unsloth" if unsloth_available(prof) else "transformers") and pol.dtype == torch.float32
    assert pol.tokenizer.eos_token == tiny_policy.tokenizer.eos_token
    assert pol.tokenizer.pad_token_id == tiny_policy.tokenizer.pad_token_id
    saved, loaded = tiny_policy.model.state_dict(), pol.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    trainable = [n for n, p in load_policy(prof, training=True).model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    ds = build_sft_dataset(prepare_splits(prof, write=False)[0]["train"].head(2), prof.grade_scale)
    cfg = CoTSFTConfig.for_profile(prof, max_steps=1, per_device_batch_size=2, grad_accum=1, eval_limit=0,
                                   bf16=False, gradient_checkpointing=False, logging_steps=1, save_steps=1000)
    trainer = sft_trainer(prof, cfg, ds, tmp_path / "out")
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.state.log_history[0]["loss"] > 0


# ----------------------------------------------------------------------------- data at scale
def _reference_normalise(value) -> str:
    """normalise_text as first written (regexes over every value): the fast version must agree with it."""
    import html
    import re
    import unicodedata

    if value is None or (isinstance(value, float) and value != value):
        return ""
    s = unicodedata.normalize("NFKC", html.unescape(str(value)))
    return re.sub(r"\s+", " ", re.sub(r"<[^>]{0,200}>", " ", s)).strip()


def _text_strategy():
    from hypothesis import strategies as st

    pieces = st.sampled_from([" ", "  ", "\t", "\n", "\x0b", "\x1c", "\xa0", "\u2003", "&amp;", "&lt;b&gt;", "&", "<b>",
                              "<", ">", "ﬁ", "é", "Ａ", "…", "a", "bc", "Red", "x-1"])
    return st.lists(pieces, max_size=12).map("".join)


def test_fast_normalisers_match_the_reference():
    """normalise_text, the arrow fast path of data._normalised and curate's vectorised length cap agree with the
    straightforward definitions on text built from whitespace, entities, tags, non-ASCII and words."""
    import pandas as pd
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from she_lib.config import get_profile
    from she_lib.data import _normalised, curate, normalise_text

    prof = get_profile("smoke", max_title_chars=6, max_bullets_chars=4, max_pairs=None, max_pairs_per_query=None)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(_text_strategy(), min_size=1, max_size=8))
    def check(texts):
        assert [normalise_text(t) for t in texts] == [_reference_normalise(t) for t in texts]
        s = pd.Series(texts + [None], dtype="str")
        assert _normalised(s).tolist() == [_reference_normalise(t) for t in texts] + [""]
        n = len(texts)
        df = pd.DataFrame({"example_id": [str(i) for i in range(n)], "query_id": "1", "query": [f"q{i}" for i in range(n)],
                           "product_id": [f"P{i}" for i in range(n)], "title": texts, "brand": "", "colour": "",
                           "category": "", "bullets": texts, "description": "", "label": "Exact", "grade": 4,
                           "source": "esci"})
        cur, report = curate(df, prof)
        for col, cap in (("title", 6), ("bullets", 4)):
            clean = [_reference_normalise(t) for t in texts]
            want = [t[:cap].rsplit(" ", 1)[0] + " …" if len(t) > cap else t for t in clean]
            assert cur[col].tolist() == want and report["truncated"][col] == sum(len(t) > cap for t in clean)

    check()


def test_inference_policy_goes_to_the_gpu_when_there_is_one(tiny_policy, tmp_path, monkeypatch):
    """Without Unsloth (SHE_NO_UNSLOTH=1, the RL and evaluation process of scripts/gpu_run.sh), a loaded model is
    moved to ``cuda:<LOCAL_RANK>`` for inference; a training policy is left where the trainer places it."""
    from she_lib.config import get_profile
    from she_lib.modeling import load_policy

    hub = tmp_path / "hub"
    tiny_policy.model.save_pretrained(hub)
    tiny_policy.tokenizer.save_pretrained(hub)
    prof = get_profile("gpu", model_name=str(hub), dtype="float32")
    moved = []
    monkeypatch.setenv("SHE_NO_UNSLOTH", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)
    to_gpu = lambda: [a for a in moved if "cuda" in str(a)]  # noqa: E731
    load_policy(prof)
    assert to_gpu() == [("cuda:1",)]
    load_policy(prof, training=True)
    assert to_gpu() == [("cuda:1",)]
