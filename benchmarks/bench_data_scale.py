"""Data at scale: load + curate + split a synthetic ESCI release of the full size (2.6M pairs), time and peak memory.

    python benchmarks/bench_data_scale.py                    # 2.6M pairs (peak ~7 GiB: needs ~8 GiB free)
    python benchmarks/bench_data_scale.py --pairs 20000      # quick run (a test runs a tiny one so it cannot rot)

The synthetic files have the official layout and the real release's shape (measured on data_samples/esci_us and
the ESCI paper): 2.6M pairs, of which 69.4% us, 13.6% es, 17.0% jp (the profile loads "us": 1.8M pairs, and the
products of the other locales are filtered out while streaming); ~20 pairs a query, 0.7 products a pair; product
titles ~110 characters, five bullets ~760, a description ~860 for half the products (null otherwise), brand,
colour, an ESCI-S category path; examples carry example_id, small_version, large_version and split like the
release; a few HTML entities and tags. Labels E/S/I/C at 65/22/10/3 %. ``--all-us`` makes every pair "us" (all
of them through curation).

Making the files and measuring run in child processes, so the measurement's peak resident memory (VmHWM) is its
own: the peak after each stage (load, curate, split) is reported with the loaded frame's own size
(``memory_usage(deep=True)``) and arrow's allocator peak. tracemalloc is not used: it misses arrow's buffers and
slows pandas' string work several-fold. The files (~2.7 GB at 2.6M pairs, written in ~2 min) stay in /tmp for
the next run. Writes ``results/bench_data_scale.json``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHUNK = 250_000
LOCALES = {"us": 0.694, "es": 0.136, "jp": 0.170}  # share of the release's pairs (and products) per locale


def _words(rng, n: int) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return np.array(["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(n)], dtype=object)


def _phrases(rng, words, n: int, lo: int, hi: int) -> np.ndarray:
    """``n`` phrases of ``lo``..``hi`` words; one in 50 carries an HTML entity or tag for the normaliser to undo."""
    out = []
    for i in range(n):
        ws = list(words[rng.integers(0, len(words), size=rng.integers(lo, hi + 1))])
        if i % 50 == 0:
            ws.insert(1, "&amp;" if i % 100 else "<br/>")
        out.append(" ".join(ws))
    return np.array(out, dtype=object)


def make_esci(folder, pairs: int, seed: int = 0, all_us: bool = False) -> Path:
    """Write the three ESCI files for ``pairs`` pairs into ``folder`` (chunked: peak 1.5 GB at 2.6M).
    Queries and products belong to one locale each, in the release's shares (or all "us")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = _words(rng, 5000)
    short, long = _phrases(rng, words, 20_000, 7, 9), _phrases(rng, words, 50_000, 22, 26)
    brands, colours = _phrases(rng, words, 30_000, 1, 2), _phrases(rng, words, 300, 1, 1)
    cats = [" ".join(c) for c in words[rng.integers(0, len(words), size=(2000, 2))]]
    n_products, n_queries = max(1, int(0.7 * pairs)), max(1, pairs // 20)
    pids = np.array([f"B{i:09d}" for i in rng.permutation(n_products)], dtype=object)
    names, shares = (["us"], [1.0]) if all_us else (list(LOCALES), list(LOCALES.values()))
    cuts = np.cumsum(shares)[:-1]  # locale of product i / query q: by its position, in the shares
    product_locale = np.array(names)[np.searchsorted(cuts * n_products, np.arange(n_products), side="right")]
    query_locale = np.searchsorted(cuts * n_queries, np.arange(n_queries), side="right")
    locale_products = [np.flatnonzero(product_locale == n) for n in names]

    with pq.ParquetWriter(folder / "shopping_queries_dataset_products.parquet", pa.schema(
            [(c, pa.string()) for c in ("product_id", "product_title", "product_description", "product_bullet_point",
                                        "product_brand", "product_color", "product_locale")])) as w, \
            gzip.open(folder / "esci_s_products.jsonl.gz", "wt", compresslevel=1) as cat_file:
        for lo in range(0, n_products, CHUNK):
            n = min(CHUNK, n_products - lo)
            t = short[rng.integers(0, len(short), size=(n, 2))]
            b = long[rng.integers(0, len(long), size=(n, 5))]
            d = long[rng.integers(0, len(long), size=(n, 6))]
            has_d = rng.random(n) < 0.52
            w.write_table(pa.table({
                "product_id": pids[lo:lo + n], "product_title": [f"{x} {y}" for x, y in t],
                "product_description": [" ".join(r) if h else None for r, h in zip(d, has_d)],
                "product_bullet_point": ["\n".join(r) for r in b],
                "product_brand": brands[rng.integers(0, len(brands), size=n)],
                "product_color": colours[rng.integers(0, len(colours), size=n)],
                "product_locale": product_locale[lo:lo + n]}))
            for pid, c in zip(pids[lo:lo + n], rng.integers(0, len(cats), size=n)):
                cat_file.write(json.dumps({"asin": pid, "category": ["Home", cats[c], cats[(c * 7) % len(cats)]]}) + "\n")

    queries = np.array([" ".join(words[rng.integers(0, len(words), size=rng.integers(2, 5))]) for _ in range(n_queries)],
                       dtype=object)
    with pq.ParquetWriter(folder / "shopping_queries_dataset_examples.parquet", pa.schema(
            [("example_id", pa.int64()), ("query", pa.string()), ("query_id", pa.int64()), ("product_id", pa.string()),
             ("product_locale", pa.string()), ("esci_label", pa.string()), ("small_version", pa.int64()),
             ("large_version", pa.int64()), ("split", pa.string())])) as w:
        for lo in range(0, pairs, CHUNK):
            n = min(CHUNK, pairs - lo)
            qid = np.minimum((np.arange(lo, lo + n) * n_queries) // pairs, n_queries - 1)
            loc = query_locale[qid]  # a query's products are of its locale
            pick = np.empty(n, dtype=np.int64)
            for i, pool in enumerate(locale_products):
                pick[loc == i] = pool[rng.integers(0, len(pool), size=int((loc == i).sum()))]
            w.write_table(pa.table({
                "example_id": np.arange(lo, lo + n), "query": queries[qid], "query_id": qid,
                "product_id": pids[pick], "product_locale": np.array(names)[loc],
                "esci_label": rng.choice(["E", "S", "I", "C"], size=n, p=[0.65, 0.22, 0.10, 0.03]),
                "small_version": rng.integers(0, 2, size=n), "large_version": np.ones(n, dtype=np.int64),
                "split": rng.choice(["train", "test"], size=n, p=[0.7, 0.3])}))
    (folder / "DONE").write_text(json.dumps({"pairs": pairs, "seed": seed, "all_us": all_us}))
    return folder


def _peak_gib() -> float:
    """Peak resident memory of this process: VmHWM (ru_maxrss would carry the parent's peak over fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def measure(folder) -> dict:
    """Load, curate and split ``folder`` with the cpu profile's settings; seconds and peak RSS after each stage."""
    import pyarrow as pa

    from she_lib.config import get_profile
    from she_lib.data import curate, load_dataset, split_by_query

    prof = get_profile("cpu", data_dir=str(folder))
    out, t0 = {"rss_at_start_gib": _peak_gib()}, time.perf_counter()
    df = load_dataset(prof)
    out.update(load_s=time.perf_counter() - t0, peak_rss_after_load_gib=_peak_gib(), pairs=len(df),
               loaded_frame_gib=df.memory_usage(deep=True).sum() / 2 ** 30)
    t0 = time.perf_counter()
    cur, report = curate(df, prof)
    del df
    out.update(curate_s=time.perf_counter() - t0, peak_rss_after_curate_gib=_peak_gib(), curated_pairs=len(cur),
               curated_frame_gib=cur.memory_usage(deep=True).sum() / 2 ** 30, queries=report["queries"],
               duplicates_dropped=report["duplicates_dropped"])
    t0 = time.perf_counter()
    splits = split_by_query(cur, prof.split_fractions, prof.split_seed)
    out.update(split_s=time.perf_counter() - t0, peak_rss_gib=_peak_gib(),
               split_pairs={k: len(v) for k, v in splits.items()}, arrow_pool_peak_gib=pa.default_memory_pool().max_memory() / 2 ** 30)
    out["total_s"] = out["load_s"] + out["curate_s"] + out["split_s"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2_600_000)
    ap.add_argument("--all-us", action="store_true", help="every pair in locale us (all through curation)")
    ap.add_argument("--data", default=None, help="folder for the synthetic files (default /tmp/she_esci_synth_...)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child processes
    ap.add_argument("--make", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return {}
    if args.make:
        make_esci(args.make, args.pairs, all_us=args.all_us)
        return {}
    data = Path(args.data or f"/tmp/she_esci_synth_{args.pairs}{'_us' if args.all_us else ''}")
    t0, make_s = time.perf_counter(), None  # None: the files of an earlier run were reused
    if not (data / "DONE").exists():
        cmd = [sys.executable, __file__, "--make", str(data), "--pairs", str(args.pairs)]
        subprocess.run(cmd + (["--all-us"] if args.all_us else []), check=True)
        make_s = round(time.perf_counter() - t0, 1)
    proc = subprocess.run([sys.executable, __file__, "--measure", str(data)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"measurement failed:\n{proc.stderr[-3000:]}")
    from she_lib.provenance import machine  # imports torch: after the measurement, which runs beside this process

    files = {p.name: round(p.stat().st_size / 2 ** 20, 1) for p in sorted(data.iterdir()) if p.name != "DONE"}
    result = {"synthetic_pairs": args.pairs, "all_us": args.all_us, "files_mib": files, "make_files_s": make_s,
              **json.loads(proc.stdout.strip().splitlines()[-1]), "machine": machine()}
    out = Path(args.out or Path(__file__).resolve().parent.parent / "results" / "bench_data_scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
