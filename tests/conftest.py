"""Shared fixtures: the smoke profile in a temp dir, the smoke splits, one trained smoke SFT run for the whole test
run, the real SmolLM2 tokenizer, a tiny model."""
import pytest
import torch

from she_lib.config import get_profile


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and do not fight other jobs for the 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def smoke(tmp_path):
    return get_profile("smoke", results_dir=str(tmp_path / "results"), runs_dir=str(tmp_path / "runs"),
                       processed_dir=str(tmp_path / "processed"))


@pytest.fixture(scope="session")
def smoke_splits():
    """The smoke profile's splits (train, validation, test), built once; read them through ``splits``."""
    from she_lib.data import prepare_splits

    return prepare_splits(get_profile("smoke"), write=False)[0]


@pytest.fixture(scope="module")
def splits(smoke_splits):
    """A copy of the smoke splits per test module, so a module that changes its frames changes no other's."""
    return {name: df.copy(deep=True) for name, df in smoke_splits.items()}


def _files(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def trained_sft(tmp_path_factory, smoke_splits):
    """A finished smoke SFT run (the smoke defaults without validation: 4 steps on 16 pairs), trained once for the
    whole test run, for the tests that need *a* trained SFT run as input (DPO, RL, launches, export). Read it, never
    write into it: a test that writes into a run folder copies it first (shutil.copytree). Checked at the end."""
    from she_lib.sft import CoTSFTConfig, train_sft

    root = tmp_path_factory.mktemp("shared_sft")
    prof = get_profile("smoke", runs_dir=str(root / "runs"), results_dir=str(root / "results"),
                       processed_dir=str(root / "processed"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test trains (the autouse fixture is not active for session fixtures)
    try:
        run = train_sft(prof, CoTSFTConfig.for_profile(prof, eval_limit=0), smoke_splits)
    finally:
        torch.set_num_threads(n)
    before = _files(run)
    yield run
    assert _files(run) == before, "a test wrote into the shared SFT run (copy it first)"


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from she_lib.modeling import smollm2_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(get_profile("smoke").cache_dir))
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="session")
def tiny_policy():
    from she_lib.modeling import load_policy

    return load_policy(get_profile("smoke"))
