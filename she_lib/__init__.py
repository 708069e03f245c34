"""she_lib: the SHE relevance workbench library (data, stepwise schema, models, evaluation).

Unsloth must be imported before transformers/trl/peft to patch them, and it cannot be imported without
a CUDA GPU: when unsloth is installed *and* CUDA is present, importing she_lib imports it first
(set ``SHE_NO_UNSLOTH=1`` to skip). Everywhere else nothing happens here.

Imports sit at the top of each module; one inside a function loads a heavy or optional package (torch,
transformers, TRL, peft, datasets, matplotlib, ...) that the module does not load already, so ``import she_lib.x``
stays light, and the modules import one another without a circle (tests/test_imports.py).
"""
import importlib.util as _util
import os as _os

__version__ = "0.1.0"


def _preload_unsloth() -> bool:
    if _os.environ.get("SHE_NO_UNSLOTH") or _util.find_spec("unsloth") is None:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    import unsloth  # noqa: F401

    return True


UNSLOTH_LOADED = _preload_unsloth()
