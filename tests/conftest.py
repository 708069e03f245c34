"""Shared fixtures: the smoke profile in a temp dir, the real SmolLM2 tokenizer, a tiny model."""
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
