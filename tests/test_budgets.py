"""Every profile's resolved budgets (the profile itself and the config each stage builds from it) match a snapshot.

``tests/data/profile_budgets.json`` was written from the code before the budgets moved into one table
(she_lib.config), so a moved or retyped number fails here. Machine-dependent fields are left out (the RL config's
precision, device and checkpointing follow the machine) and the vLLM choice is recorded as the word ``rl_config``
passes to ``vllm_settings``. After a deliberate budget change: ``python tests/test_budgets.py`` rewrites the file.
"""
import dataclasses
import json
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).parent / "data" / "profile_budgets.json"
# the SRPOConfig fields rl_config sets (over TRL's defaults) and SRPO's own fields
RL_FIELDS = ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length",
             "learning_rate", "lr_scheduler_type", "warmup_steps", "temperature", "beta", "shuffle_dataset", "seed",
             "data_seed", "save_total_limit", "log_completions", "max_steps", "logging_steps", "save_steps",
             "process_weight", "kappa_first_error", "kappa_discriminative", "step_threshold", "process_credit",
             "advantage_clip", "rollout_log_every", "decision_credit")


def _plain(value, root: str) -> dict:
    """JSON types, the repository's path written as ``<repo>``."""
    return json.loads(json.dumps(value, default=str).replace(json.dumps(root)[1:-1], "<repo>"))


def resolve_all(monkeypatch) -> dict:
    """{profile: {"profile": ..., "sft": ..., "dpo": ..., "genrm": ..., "curriculum": ..., "rl_<method>": ...}}."""
    from she_lib import rl
    from she_lib.config import PROFILES, REPO_ROOT, get_profile
    from she_lib.dpo import DPOBaselineConfig
    from she_lib.genrm import GenRMConfig
    from she_lib.grade_probe import GradeProbeConfig
    from she_lib.sft import CoTSFTConfig

    vllm = []
    monkeypatch.setattr(rl, "vllm_settings", lambda word: vllm.append(word) or {"use_vllm": False})
    out = {}
    for name in sorted(PROFILES):
        prof = get_profile(name)
        entry = {"profile": {k: v for k, v in prof.to_dict().items() if k != "cache_dir"},
                 "sft": dataclasses.asdict(CoTSFTConfig.for_profile(prof)),
                 "dpo": dataclasses.asdict(DPOBaselineConfig.for_profile(prof)),
                 "genrm": dataclasses.asdict(GenRMConfig.for_profile(prof)),
                 "curriculum": dataclasses.asdict(rl.curriculum_for(prof)),
                 "probe": dataclasses.asdict(GradeProbeConfig.for_profile(prof))}
        for method in rl.METHODS:
            args = rl.rl_config(prof, method)
            entry[f"rl_{method}"] = {**{k: getattr(args, k) for k in RL_FIELDS}, "vllm": vllm.pop()}
        out[name] = _plain(entry, str(REPO_ROOT))
    return out


def test_every_profile_resolves_to_the_snapshot(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    want = json.loads(SNAPSHOT.read_text())
    got = resolve_all(monkeypatch)
    assert sorted(got) == sorted(want)
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), name
        for part in want[name]:
            assert got[name][part] == want[name][part], (name, part)


def test_one_table_entry_per_profile_holds_every_stage():
    from she_lib.config import PROFILES, STAGES, TABLE, get_profile, stage_budget

    assert set(TABLE) == set(PROFILES) and all(set(entry) == {"profile", *STAGES} for entry in TABLE.values())
    budget = stage_budget("cpu", "sft")
    budget["train_limit"] = 1  # a copy: the table is not changed through it
    assert stage_budget(get_profile("cpu"), "sft")["train_limit"] == 320
    assert stage_budget(get_profile("cpu").replace(name="mine"), "rl") == {}  # not in the table: the config defaults
    with pytest.raises(KeyError, match="unknown stage"):
        stage_budget("cpu", "ppo")


if __name__ == "__main__":  # rewrite the snapshot (after a deliberate budget change)
    mp = pytest.MonkeyPatch()
    SNAPSHOT.write_text(json.dumps(resolve_all(mp), indent=1, sort_keys=True) + "\n")
    mp.undo()
