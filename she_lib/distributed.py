"""Multi-process runs: which process writes files, and ordering around files every process needs.

Under ``accelerate launch`` (torchrun for DDP/FSDP, the DeepSpeed launcher) every process runs the same script
with its global rank in ``$RANK`` and the process count in ``$WORLD_SIZE``; outside a launch both are absent,
so the helpers below cost nothing in a notebook or a plain ``python -m``. The project's rules:

* only rank 0 writes run folders, processed splits and results (:func:`is_main_process`);
* collective calls (``trainer.train``, ``trainer.evaluate``, ``trainer.save_model``, which gathers FSDP / ZeRO-3
  shards and writes on rank 0 only) run on every rank;
* a file that all ranks read is made by rank 0 first (:func:`main_process_first`), and a function that returns
  a folder waits until rank 0 has finished writing it (:func:`wait_for_everyone`).
"""
from __future__ import annotations

import os
from contextlib import contextmanager


def rank() -> int:
    """Global rank of this process (0 outside a distributed launch)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes of the launch (1 outside a distributed launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the one process that writes files: global rank 0."""
    return rank() == 0


def _state():
    """accelerate's process state. ``cpu`` must be explicit: without it a CPU-only process of a launch sets up as
    undistributed (no process group) and every barrier silently passes."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def wait_for_everyone() -> None:
    """Barrier across all processes (no-op in a single process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


@contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. builds and writes the processed splits), then the others (which read them)."""
    if world_size() == 1:
        yield
        return
    with _state().main_process_first():
        yield
