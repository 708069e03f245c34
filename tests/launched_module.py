"""``python tests/launched_module.py MODULE ARGS... [:: MODULE ARGS...]...`` runs ``python -m MODULE ARGS...`` for
tests/test_scale.py, once per ``::``-separated command, in order, in the same processes (one launch, one import of the
stack, for several stages); a command that exits non-zero stops the rest.

Under ``accelerate launch`` every process runs this file. Two things differ from a plain ``python -m``:

* the smoke profile writes under ``$SHE_TEST_OUT`` (``runs/``, ``processed/``) instead of the repository, as
  ``test_sft_cli_on_smoke`` does in-process;
* a Python audit hook records every file this process opens for writing, removes or renames under
  ``$SHE_TEST_OUT``; at exit the list goes to ``$SHE_TEST_OUT/writes/rank{RANK}.json`` so the test can tell which
  rank wrote what. Files written by native code (safetensors weights, ``tokenizer.json``) are not seen; their
  Python-written companions (``adapter_config.json``, ``tokenizer_config.json``) are.
"""
import atexit
import json
import os
import runpy
import sys

OUT = os.path.realpath(os.environ["SHE_TEST_OUT"])
RANK = os.environ.get("RANK", "0")
WRITES: list[list[str]] = []


def _audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2]
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
        paths = [args[0]] if writing else []
    elif event in ("os.remove", "os.rename", "os.replace"):
        paths = [args[0]]
    else:
        return
    for p in paths:
        p = os.path.realpath(os.fsdecode(p))
        if p.startswith(OUT + os.sep) and os.sep + "writes" + os.sep not in p:
            WRITES.append([event, os.path.relpath(p, OUT)])


def _dump():
    os.makedirs(os.path.join(OUT, "writes"), exist_ok=True)
    with open(os.path.join(OUT, "writes", f"rank{RANK}.json"), "w") as f:
        json.dump(WRITES, f)


if __name__ == "__main__":
    from she_lib import config

    config.PROFILES["smoke"] = config.PROFILES["smoke"].replace(
        runs_dir=os.path.join(OUT, "runs"), processed_dir=os.path.join(OUT, "processed"),
        results_dir=os.path.join(OUT, "results"))
    atexit.register(_dump)
    sys.addaudithook(_audit)
    commands, argv = [[]], sys.argv[1:]
    for a in argv:
        if a == "::":
            commands.append([])
        else:
            commands[-1].append(a)
    for module, *args in commands:
        sys.argv = [module, *args]
        print(f"launched_module: rank {RANK} runs python -m {' '.join(sys.argv)}", file=sys.stderr, flush=True)
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            if e.code not in (None, 0):
                raise
