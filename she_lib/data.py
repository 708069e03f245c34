"""Data: load real relevance data into one schema, curate it, split it by query.

Schema (one row per query-product pair, all text columns are ``str``, never NaN)::

    example_id, query_id, query, product_id, title, brand, colour, category, bullets,
    description, label (grade word), grade (int, higher = more relevant), source, split

Loaders
-------
* :func:`load_esci` reads the official Amazon ESCI layout (``shopping_queries_dataset_examples``
  and ``..._products`` as parquet, or CSV with the same columns) plus the optional ESCI-S
  ``esci_s_products.jsonl.gz`` for category paths; pointing it at the full release just works.
* :func:`load_wands` reads Wayfair WANDS (``product.csv``, ``query.csv``, ``label.csv``, tab-separated).

At scale (the full release: 2.6M pairs, ~1.8M products, ``benchmarks/bench_data_scale.py``) only the columns
the schema uses are read, the products file is streamed in record batches keeping only the products the examples
name (and the locale), plain ASCII text is normalised in arrow (other text in Python, once per distinct value), and
curation copies no column it leaves unchanged.

Bad input raises :class:`DataError` naming file, row (1-based data row, header excluded) and field.
With ``bad_rows="skip"`` row-level problems (unknown label, empty query/title, unknown product) are
skipped instead and counted in ``df.attrs["skipped"]``; file-level problems (missing column, wrong
delimiter, bytes that are not UTF-8, ragged CSV) always raise.

Curation (:func:`curate`): HTML-unescape, strip tags, NFKC, collapse whitespace; drop duplicate
(query, product) pairs (conflicting labels: keep the first, count the conflict); cap field lengths
(counts of what was cut); optionally cap pairs per query and keep whole queries until ``max_pairs``. Split (:func:`split_by_query`):
queries sorted by ``sha1(f"{seed}:{query.lower()}")`` and cut at the split fractions, so no query is in
two splits and the split does not depend on row order.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import Profile
from .distributed import main_process_first
from .facts import FACTS_VERSION, add_facts
from .labels import GradeScale, get_scale

TEXT_COLUMNS = ("query", "title", "brand", "colour", "category", "bullets", "description")
SCHEMA = ("example_id", "query_id", "query", "product_id", *TEXT_COLUMNS[1:], "label", "grade", "source")
SPLITS = ("train", "validation", "test")
# The columns of the official ESCI files that load_esci uses (others, e.g. small_version or split, are not read).
ESCI_EXAMPLE_COLUMNS = ("example_id", "query_id", "query", "product_id", "product_locale", "esci_label")
ESCI_PRODUCT_COLUMNS = ("product_id", "product_title", "product_brand", "product_color", "product_bullet_point",
                        "product_description", "product_locale")


class DataError(ValueError):
    """A problem in an input file, located by file, row (1-based, header excluded) and field."""

    def __init__(self, file, row: int | None, field: str | None, message: str):
        self.file, self.row, self.field = str(file), row, field
        where = f"{file}" + (f", row {row}" if row is not None else "") + (
            f", field {field!r}" if field is not None else "")
        super().__init__(f"{where}: {message}")


# ----------------------------------------------------------------------------------------- reading
def _check_columns(path: Path, found: list, required: tuple[str, ...], sep: str) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        hint = ""
        if len(found) == 1:
            hint = f" (only one column was found: is the delimiter {sep!r} right?)"
        raise DataError(path, None, missing[0], f"missing column; found {list(found)}{hint}")


def read_table(path: Path, required: tuple[str, ...], sep: str = ",", columns: tuple[str, ...] | None = None
               ) -> pd.DataFrame:
    """Read a parquet or delimited text file as strings and check that ``required`` columns exist.

    ``columns``: of a parquet file read only these (those present); text files are read whole."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.suffix == ".parquet":
        names = pq.read_schema(path).names
        _check_columns(path, names, required, sep)
        return pd.read_parquet(path, columns=[c for c in names if c in columns] if columns else None)
    else:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n")  # 0 = header line
            raise DataError(path, line if line else None, None,
                            f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); re-encode the file as UTF-8") from None
        try:
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                             quoting=3 if sep == "\t" else 0)
        except pd.errors.ParserError as e:
            m = re.search(r"line (\d+)", str(e))
            raise DataError(path, int(m.group(1)) - 1 if m else None, None, f"malformed file: {e}") from None
    _check_columns(path, list(df.columns), required, sep)
    return df


def _open_products(path: Path):
    """The ESCI products file: a text file read whole; of a parquet file (streamed later) the columns are checked."""
    if path.suffix != ".parquet":
        return read_table(path, ("product_id", "product_title"))
    _check_columns(path, pq.read_schema(path).names, ("product_id", "product_title"), ",")
    return path


def _select_products(source, ids: pd.Series, locale: str | None, batch_rows: int = 20_000) -> pd.DataFrame:
    """The products whose product_id is in ``ids`` (and locale is ``locale``), indexed by their row in the file.
    Parquet is streamed in record batches, so products the examples do not name (other locales, most of the
    release) are never held in memory."""
    if isinstance(source, pd.DataFrame):
        keep = source["product_id"].isin(ids)
        if locale and "product_locale" in source.columns:
            keep &= source["product_locale"] == locale
        return source[keep]
    f = pq.ParquetFile(source)  # closed on return: the reader keeps buffers while open
    columns = [c for c in f.schema_arrow.names if c in ESCI_PRODUCT_COLUMNS]
    wanted = pa.array(ids.dropna().unique()).cast(f.schema_arrow.field("product_id").type)
    parts, rows, start = [], [], 0
    for batch in f.iter_batches(batch_size=batch_rows, columns=columns):
        keep = pc.is_in(batch["product_id"], value_set=wanted)
        if locale and "product_locale" in columns:
            keep = pc.and_(keep, pc.equal(batch["product_locale"], locale))
        keep = keep.fill_null(False)
        parts.append(batch.filter(keep))
        rows.append(start + np.flatnonzero(keep.to_numpy(zero_copy_only=False)))
        start += batch.num_rows
    table = pa.Table.from_batches(parts, schema=parts[0].schema if parts else f.schema_arrow)
    return table.to_pandas().set_axis(np.concatenate(rows) if rows else np.empty(0, dtype=np.int64))


_TAG = re.compile(r"<[^>]{0,200}>")


def normalise_text(value) -> str:
    """HTML-unescape, NFKC, drop tags, collapse whitespace; None/NaN become ''.

    Each step runs only where it can change something (``&``, non-ASCII, ``<``); ``str.split()`` splits on exactly
    the characters of the regex ``\\s``."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    s = str(value)
    if "&" in s:
        s = html.unescape(s)
    if not s.isascii():
        s = unicodedata.normalize("NFKC", s)
    if "<" in s:
        s = _TAG.sub(" ", s)
    return " ".join(s.split())


# The ASCII characters that str.split() (and the regex \s) split on, and the spacing normalise_text changes.
_ASCII_SPACES = r"[\t-\r\x1c-\x1f ]+"
_ODD_SPACING = r"[\t-\r\x1c-\x1f]|^ | $|  "


def _normalised(s: pd.Series) -> pd.Series:
    """``s.map(normalise_text)``, fast: values that are ASCII without ``&`` or ``<`` only need their spacing
    collapsed, done in arrow without Python strings; the others go through :func:`normalise_text` once per
    distinct value. ``s`` itself comes back when nothing changes (re-normalising loaded data copies nothing)."""
    if not (isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow"):  # object, categorical, ...
        return s.map(normalise_text) if isinstance(s.dtype, pd.CategoricalDtype) else _map_distinct(s, normalise_text)
    simple = s.str.isascii() & ~s.str.contains("[&<]")  # False where missing
    rest = _map_distinct(s[~simple], normalise_text)
    if not (s.str.contains(_ODD_SPACING) & simple).any() and not s.hasnans and rest.equals(s[~simple]):
        return s
    return s.str.replace(_ASCII_SPACES, " ", regex=True).str.strip(" ").where(simple, rest)


def _find(folder: Path, stem: str) -> Path:
    for ext in (".parquet", ".csv", ".tsv"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    raise DataError(folder / f"{stem}.parquet", None, None, "file not found (also looked for .csv, .tsv)")


def _bad_rows(df: pd.DataFrame, mask: pd.Series, file, field: str, message: str, policy: str,
              skipped: dict) -> pd.DataFrame:
    """Raise on the first row where ``mask`` holds, or drop those rows and count them."""
    if not mask.any():
        return df
    if policy == "raise":
        pos = int(mask.to_numpy().nonzero()[0][0])  # frames keep the file's RangeIndex until joined
        raise DataError(file, int(df.index[pos]) + 1, field, message.format(value=df.iloc[pos][field]))
    reason = re.sub(r"\s+", " ", message.replace("{value!r}", "").split(";")[0]).strip()
    skipped[f"{field}: {reason}"] = skipped.get(f"{field}: {reason}", 0) + int(mask.sum())
    return df[~mask]


def _text(df: pd.DataFrame, col: str) -> pd.Series:
    return _normalised(df[col]) if col in df.columns else pd.Series("", index=df.index)


def _map_distinct(s: pd.Series, fn) -> pd.Series:
    """``s.map(fn)`` calling ``fn`` once per distinct value."""
    if s.empty:
        return s.map(fn)
    codes, uniques = pd.factorize(s, use_na_sentinel=False)
    return pd.Series(np.asarray([fn(u) for u in uniques], dtype=object)[codes], index=s.index)


# ------------------------------------------------------------------------------------------ loaders
def load_esci(folder, locale: str | None = "us", scale: str | GradeScale = "esci",
              bad_rows: str = "raise") -> pd.DataFrame:
    """Load the official ESCI layout from ``folder`` into the schema (see module docstring)."""
    folder, scale = Path(folder), get_scale(scale)
    ex_path, pr_path = _find(folder, "shopping_queries_dataset_examples"), _find(folder, "shopping_queries_dataset_products")
    ex = read_table(ex_path, ("query_id", "query", "product_id", "esci_label"), columns=ESCI_EXAMPLE_COLUMNS)
    products = _open_products(pr_path)
    if locale and "product_locale" in ex.columns:
        ex = ex[ex["product_locale"] == locale]
    skipped: dict = {}
    known = _map_distinct(ex["esci_label"], lambda v: v in scale.raw_to_word or str(v).strip() in scale.raw_to_word)
    ex = _bad_rows(ex, ~known.astype(bool), ex_path, "esci_label",
                   "unknown label {value!r}; expected one of " + str(sorted(map(str, scale.raw_to_word))),
                   bad_rows, skipped)
    query = _text(ex, "query")
    ex = _bad_rows(ex, query == "", ex_path, "query", "empty query", bad_rows, skipped)
    pr = _select_products(products, ex["product_id"], locale).drop_duplicates("product_id")
    fields = {"bullets": "product_bullet_point", "description": "product_description", "title": "product_title",
              "brand": "product_brand", "colour": "product_color"}  # largest first: see the join below
    for src in fields.values():  # normalised once per product, replacing the raw text
        pr[src] = _text(pr, src)
    pr = _bad_rows(pr, pr["product_title"] == "", pr_path, "product_title", "empty product title", bad_rows, skipped)
    ex = _bad_rows(ex, ~ex["product_id"].isin(pr["product_id"]), ex_path, "product_id",
                   "product {value!r} not in the products file (or skipped there)", bad_rows, skipped)
    df = pd.DataFrame({
        "example_id": ex["example_id"].astype(str) if "example_id" in ex.columns
        else ex["query_id"].astype(str) + ":" + ex["product_id"],
        "query_id": ex["query_id"].astype(str), "query": query.loc[ex.index], "product_id": ex["product_id"],
        "label": _map_distinct(ex["esci_label"], scale.word)}).reset_index(drop=True)
    at = pd.Index(pr["product_id"]).get_indexer(df["product_id"])  # each pair's product
    for col, src in fields.items():  # the per-pair column grows as the per-product one is freed
        df[col] = pr.pop(src).iloc[at].reset_index(drop=True)
    del pr
    categories = _esci_s_categories(folder, set(df["product_id"]))
    df["category"] = _map_distinct(df["product_id"], lambda pid: categories.get(pid, ""))
    return _finish(df, scale, "esci", skipped)


def _esci_s_categories(folder: Path, asins: set | None = None) -> dict[str, str]:
    """ESCI-S category paths by ASIN (of ``asins`` only, when given), each distinct path normalised once."""
    path = folder / "esci_s_products.jsonl.gz"
    if not path.exists():
        return {}
    out, paths = {}, {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, i, None, f"invalid JSON: {e}") from None
            asin = rec.get("asin", "")
            if asins is not None and asin not in asins:
                continue
            cats = tuple(c for c in rec.get("category") or [] if c)
            if cats not in paths:
                paths[cats] = " > ".join(normalise_text(c) for c in cats)
            out[asin] = paths[cats]
    return out


def load_wands(folder, scale: str | GradeScale = "wands", bad_rows: str = "raise") -> pd.DataFrame:
    """Load WANDS (tab-separated product.csv, query.csv, label.csv) into the schema.

    WANDS has no brand column; colour is read from ``product_features`` (``key:value|...``, the first
    key containing 'color'); category is ``category hierarchy`` with '/' turned into ' > '."""
    folder, scale = Path(folder), get_scale(scale)
    q = read_table(folder / "query.csv", ("query_id", "query"), sep="\t")
    p = read_table(folder / "product.csv", ("product_id", "product_name"), sep="\t")
    lab = read_table(folder / "label.csv", ("query_id", "product_id", "label"), sep="\t")
    skipped: dict = {}
    lab = _bad_rows(lab, ~lab["label"].isin(list(scale.raw_to_word)), folder / "label.csv", "label",
                    "unknown label {value!r}; expected one of " + str(sorted(scale.raw_to_word)), bad_rows, skipped)
    lab = _bad_rows(lab, ~lab["query_id"].isin(q["query_id"]), folder / "label.csv", "query_id",
                    "query {value!r} not in query.csv", bad_rows, skipped)
    lab = _bad_rows(lab, ~lab["product_id"].isin(p["product_id"]), folder / "label.csv", "product_id",
                    "product {value!r} not in product.csv", bad_rows, skipped)
    q = _bad_rows(q, q["query_id"].isin(lab["query_id"]) & (_text(q, "query") == ""), folder / "query.csv",
                  "query", "empty query", bad_rows, skipped)
    p = _bad_rows(p, p["product_id"].isin(lab["product_id"]) & (_text(p, "product_name") == ""),
                  folder / "product.csv", "product_name", "empty product name", bad_rows, skipped)
    lab = lab[lab["query_id"].isin(q["query_id"]) & lab["product_id"].isin(p["product_id"])]
    q, p = q.drop_duplicates("query_id").set_index("query_id"), p.drop_duplicates("product_id").set_index("product_id")
    qq, pp = q.loc[lab["query_id"]].reset_index(drop=True), p.loc[lab["product_id"]].reset_index(drop=True)
    lab = lab.reset_index(drop=True)
    df = pd.DataFrame({
        "example_id": lab["id"] if "id" in lab.columns else lab["query_id"] + ":" + lab["product_id"],
        "query_id": lab["query_id"], "query": _text(qq, "query"), "product_id": lab["product_id"],
        "title": _text(pp, "product_name"), "brand": "",
        "colour": pp.get("product_features", pd.Series("", index=pp.index)).map(_wands_colour),
        "category": _text(pp, "category hierarchy").str.replace(r"\s*/\s*", " > ", regex=True),
        "bullets": _text(pp, "product_features").str.replace("|", "; ", regex=False),
        "description": _text(pp, "product_description"), "label": lab["label"].map(scale.word)})
    return _finish(df, scale, "wands", skipped)


def _wands_colour(features: str) -> str:
    for item in str(features or "").split("|"):
        key, _, value = item.partition(":")
        if "color" in key.lower() or "colour" in key.lower():
            return normalise_text(value)
    return ""


def _finish(df: pd.DataFrame, scale: GradeScale, source: str, skipped: dict) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df["grade"] = df["label"].map(scale.grades).astype(int)
    df["source"] = source
    df = df[list(SCHEMA)]
    df.attrs.update(skipped=skipped, scale=scale.name)
    return df


def load_dataset(profile: Profile, folder=None) -> pd.DataFrame:
    """Load ``folder`` (default ``profile.data_dir``) with the profile's format and settings."""
    folder = folder or profile.data_dir
    if profile.data_format == "esci":
        return load_esci(folder, profile.locale, profile.grade_scale, profile.bad_rows)
    if profile.data_format == "wands":
        return load_wands(folder, profile.grade_scale, profile.bad_rows)
    raise ValueError(f"unknown data_format {profile.data_format!r}; choose 'esci' or 'wands'")


# ---------------------------------------------------------------------------------------- curation
def query_key(query: str) -> str:
    return normalise_text(query).lower()


def _query_order(keys, seed: int) -> list[str]:
    return sorted(set(keys), key=lambda k: hashlib.sha1(f"{seed}:{k}".encode()).hexdigest())


def curate(df: pd.DataFrame, profile: Profile) -> tuple[pd.DataFrame, dict]:
    """Normalise, de-duplicate, cap lengths, optionally subsample whole queries, add facts.

    Returns the curated frame and a report of every count (nothing is dropped silently). ``df`` is not modified;
    columns that stay the same are shared with it, not copied (pandas copy-on-write), and lengths are capped
    before duplicates are dropped, so the one row-filtering copy is of the short fields."""
    report = {"rows_in": len(df), "skipped_at_load": dict(df.attrs.get("skipped", {}))}
    df = df.assign(**{col: _normalised(df[col]) for col in TEXT_COLUMNS})
    df["query_key"] = df["query"].str.lower()
    dup = df.duplicated(["query_key", "product_id"], keep="first")
    labels_per_pair = df.groupby(["query_key", "product_id"])["label"].transform("nunique")
    report["duplicates_dropped"] = int(dup.sum())
    report["conflicting_label_pairs"] = int(((labels_per_pair > 1) & ~dup).sum())
    caps = {"title": profile.max_title_chars, "bullets": profile.max_bullets_chars,
            "description": profile.max_description_chars}
    report["truncated"] = {}
    for col, cap in caps.items():
        long = df[col].str.len() > cap
        report["truncated"][col] = int((long & ~dup).sum())
        if long.any():  # s[:cap].rsplit(" ", 1)[0] + " …", vectorised
            df[col] = df[col].where(~long, df[col].str.slice(0, cap).str.replace(r" [^ ]*$", "", regex=True) + " …")
    if dup.any():
        df = df[~dup]
    if profile.max_pairs_per_query:
        order = df["example_id"].map(lambda e: hashlib.sha1(f"{profile.split_seed}:{e}".encode()).hexdigest())
        rank = order.groupby(df["query_key"]).rank(method="first")
        report["capped_per_query"] = int((rank > profile.max_pairs_per_query).sum())
        df = df[rank <= profile.max_pairs_per_query]
    if profile.max_pairs:
        counts = df.groupby("query_key").size()
        keep, total = [], 0
        for k in _query_order(df["query_key"], profile.split_seed):
            if total >= profile.max_pairs:
                break
            keep.append(k)
            total += int(counts[k])
        df = df[df["query_key"].isin(keep)]
    df = add_facts(df.reset_index(drop=True))
    report.update(rows_out=len(df), queries=int(df["query_key"].nunique()), facts_version=FACTS_VERSION)
    return df, report


def split_by_query(df: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 13) -> dict[str, pd.DataFrame]:
    """Deterministic query-disjoint split: sort queries by a seeded hash, cut at ``fractions``."""
    if abs(sum(fractions) - 1) > 1e-6 or len(fractions) != 3:
        raise ValueError(f"split fractions must be three numbers summing to 1, got {fractions}")
    keys = df["query_key"] if "query_key" in df.columns else df["query"].map(query_key)
    order = _query_order(keys, seed)
    n_train, n_val = round(fractions[0] * len(order)), round(fractions[1] * len(order))
    assign = {k: "train" for k in order[:n_train]}
    assign.update({k: "validation" for k in order[n_train:n_train + n_val]})
    assign.update({k: "test" for k in order[n_train + n_val:]})
    split = keys.map(assign)
    return {s: df[split == s].assign(split=s).reset_index(drop=True) for s in SPLITS}


def label_report(splits: dict[str, pd.DataFrame], scale: str = "esci") -> pd.DataFrame:
    """Counts and shares of each grade per split, with query counts."""
    words = list(get_scale(scale).words)
    rows = []
    for name, d in splits.items():
        counts = d["label"].value_counts().reindex(words, fill_value=0)
        rows.append({"split": name, "pairs": len(d), "queries": d["query_key"].nunique(),
                     **{w: int(counts[w]) for w in words},
                     **{f"{w} %": round(100 * counts[w] / max(len(d), 1), 1) for w in words}})
    return pd.DataFrame(rows).set_index("split")


def prepare_splits(profile: Profile, write: bool = True) -> tuple[dict[str, pd.DataFrame], dict]:
    """Load, curate and split per the profile; write ``{split}.parquet`` + ``curation_report.json``."""
    df, report = curate(load_dataset(profile), profile)
    splits = split_by_query(df, profile.split_fractions, profile.split_seed)
    report["splits"] = label_report(splits, profile.grade_scale).reset_index().to_dict("records")
    if write:
        out = Path(profile.processed_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, d in splits.items():
            d.to_parquet(out / f"{name}.parquet", index=False)
        (out / "curation_report.json").write_text(json.dumps(report, indent=2))
    return splits, report


def with_evidence(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with an ``evidence`` column, shown in the prompt (schema.user_prompt) when a profile sets
    ``prompt_evidence``: "found: <matched terms>; missing: <missing terms>[; excluded but stated: <negation hits>]"
    from the facts columns (she_lib.facts), so the model sees what the lexical baseline decides from."""
    return df.assign(evidence=[evidence_line(m, x, h) for m, x, h in zip(df["matched_terms"], df["missing_terms"],
                                                                          df["negation_hits"])])


def evidence_line(matched, missing, negation_hits) -> str:
    """One pair's evidence line (:func:`with_evidence`) from its facts columns."""
    out = f"found: {', '.join(matched) or 'none'}; missing: {', '.join(missing) or 'none'}"
    return out + (f"; excluded but stated: {', '.join(negation_hits)}" if len(negation_hits) else "")


def _current(out: Path) -> bool:
    """The processed splits in ``out`` exist and their facts are of this FACTS_VERSION (curation_report.json)."""
    if not all((out / f"{s}.parquet").exists() for s in SPLITS):
        return False
    try:
        return json.loads((out / "curation_report.json").read_text()).get("facts_version") == FACTS_VERSION
    except (OSError, ValueError):
        return False


def folder_pairs(profile: Profile, folder) -> pd.DataFrame:
    """Every pair of a further ESCI folder, curated as the profile curates (without its pair caps)."""
    return curate(load_dataset(profile, folder), profile.replace(max_pairs=None, max_pairs_per_query=None))[0]


def folder_splits(profile: Profile, folder) -> dict[str, pd.DataFrame]:
    """A further ESCI folder (``profile.extra_train_dirs`` / ``extra_eval_dirs``) curated (folder_pairs) and split
    by query at ``profile.extra_split_fractions`` (same hash, same seed as the main split): its train and
    validation pairs can join the profile's (load_splits), its test split is an evaluation set
    (evaluate.external_set), and no query is in two of them."""
    return split_by_query(folder_pairs(profile, folder), profile.extra_split_fractions, profile.split_seed)


def load_splits(profile: Profile) -> dict[str, pd.DataFrame]:
    """Read the processed splits written by notebook 01 (built on the fly if absent, or rebuilt if their facts are
    of another FACTS_VERSION), then append the train and validation splits of every ``profile.extra_train_dirs``
    folder (folder_splits; their test queries stay out). In a multi-process launch rank 0 builds and writes them
    first, then the other ranks read them."""
    out = Path(profile.processed_dir)
    with main_process_first():
        if not _current(out):
            splits = prepare_splits(profile)[0]
        else:
            splits = {s: pd.read_parquet(out / f"{s}.parquet") for s in SPLITS}
    for folder in profile.extra_train_dirs:
        more = folder_splits(profile, folder)
        for s in ("train", "validation"):
            splits[s] = pd.concat([splits[s], more[s]], ignore_index=True)
    return {s: with_evidence(d) for s, d in splits.items()} if profile.prompt_evidence else splits
