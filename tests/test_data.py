"""Loaders, bad input, curation, query-disjoint split, facts."""
import gzip
import json

import pandas as pd
import pytest

from she_lib.config import get_profile
from she_lib.data import (DataError, curate, label_report, load_esci, load_splits, load_wands,
                          normalise_text, prepare_splits, split_by_query)
from she_lib.facts import example_facts, split_query, stem

REAL = get_profile("cpu").data_dir


def write_esci(folder, examples, products, categories=None, fmt="csv"):
    folder.mkdir(parents=True, exist_ok=True)
    ex, pr = pd.DataFrame(examples), pd.DataFrame(products)
    if fmt == "csv":
        ex.to_csv(folder / "shopping_queries_dataset_examples.csv", index=False)
        pr.to_csv(folder / "shopping_queries_dataset_products.csv", index=False)
    else:
        ex.to_parquet(folder / "shopping_queries_dataset_examples.parquet")
        pr.to_parquet(folder / "shopping_queries_dataset_products.parquet")
    if categories:
        with gzip.open(folder / "esci_s_products.jsonl.gz", "wt") as f:
            for asin, cat in categories.items():
                f.write(json.dumps({"asin": asin, "category": cat}) + "\n")
    return folder


EX = [{"query_id": 1, "query": "red shoes", "product_id": "P1", "product_locale": "us", "esci_label": "E"},
      {"query_id": 1, "query": "red shoes", "product_id": "P2", "product_locale": "us", "esci_label": "I"},
      {"query_id": 2, "query": "Mug  without handle", "product_id": "P3", "product_locale": "us", "esci_label": "S"}]
PR = [{"product_id": "P1", "product_title": "Red <b>Running</b> Shoes", "product_brand": "Acme",
       "product_color": "Red", "product_bullet_point": "light", "product_description": None, "product_locale": "us"},
      {"product_id": "P2", "product_title": "Blue Hat", "product_brand": "", "product_color": "Blue",
       "product_bullet_point": "", "product_description": "warm", "product_locale": "us"},
      {"product_id": "P3", "product_title": "Coffee mug with handle", "product_brand": "Mugs&amp;Co",
       "product_color": "", "product_bullet_point": "", "product_description": "", "product_locale": "us"}]


def test_load_esci_small(tmp_path):
    d = load_esci(write_esci(tmp_path / "e", EX, PR, {"P1": ["Shoes", "Running Shoes"]}, fmt="parquet"))
    assert list(d["label"]) == ["Exact", "Irrelevant", "Substitute"]
    assert list(d["grade"]) == [4, 1, 3]
    assert d.loc[0, "title"] == "Red Running Shoes" and d.loc[0, "category"] == "Shoes > Running Shoes"
    assert d.loc[0, "description"] == "" and d.loc[2, "brand"] == "Mugs&Co"
    assert d.loc[2, "query"] == "Mug without handle" and d.loc[0, "example_id"] == "1:P1"


def test_real_esci_counts():
    d = load_esci(REAL)
    assert len(d) == 5289 and d["query"].nunique() == 120
    assert d["label"].value_counts().to_dict() == {"Exact": 2663, "Substitute": 1521, "Irrelevant": 863,
                                                   "Complement": 242}
    assert not d[["title", "brand", "colour", "category"]].isna().any().any()


@pytest.mark.parametrize("bad, match", [
    (lambda ex, pr: ex.drop(columns="esci_label"), "field 'esci_label': missing column"),
    (lambda ex, pr: ex.assign(esci_label=["E", "X", "S"]), r"row 2, field 'esci_label': unknown label 'X'"),
    (lambda ex, pr: ex.assign(query=["red shoes", "  ", "mug"]), r"row 2, field 'query': empty query"),
    (lambda ex, pr: ex.assign(product_id=["P1", "P9", "P3"]), r"row 2, field 'product_id': product 'P9'"),
])
def test_esci_bad_rows_name_file_row_field(tmp_path, bad, match):
    ex, pr = bad(pd.DataFrame(EX), pd.DataFrame(PR)), pd.DataFrame(PR)
    folder = write_esci(tmp_path / "e", ex.to_dict("records"), pr.to_dict("records"))
    with pytest.raises(DataError, match=match) as err:
        load_esci(folder)
    assert "shopping_queries_dataset_examples.csv" in str(err.value)


def test_esci_empty_title_raises_or_is_counted(tmp_path):
    pr = [dict(p) for p in PR]
    pr[1]["product_title"] = ""
    folder = write_esci(tmp_path / "e", EX, pr)
    with pytest.raises(DataError, match=r"products.csv, row 2, field 'product_title': empty product title"):
        load_esci(folder)
    d = load_esci(folder, bad_rows="skip")
    assert list(d["product_id"]) == ["P1", "P3"]
    assert d.attrs["skipped"] == {"product_title: empty product title": 1,
                                  "product_id: product not in the products file (or skipped there)": 1}


def test_esci_unknown_label_skip_is_counted(tmp_path):
    ex = [dict(e) for e in EX]
    ex[0]["esci_label"] = "maybe"
    d = load_esci(write_esci(tmp_path / "e", ex, PR), bad_rows="skip")
    assert len(d) == 2 and d.attrs["skipped"] == {"esci_label: unknown label": 1}


def test_non_utf8_and_ragged_csv(tmp_path):
    folder = write_esci(tmp_path / "e", EX, PR)
    f = folder / "shopping_queries_dataset_examples.csv"
    f.write_bytes(f.read_bytes().replace(b"red shoes", b"r\xe9d shoes", 1))
    with pytest.raises(DataError, match=r"examples.csv, row 1: not valid UTF-8 \(byte 0xe9\)"):
        load_esci(folder)
    f.write_text("query_id,query,product_id,esci_label\n1,a,P1,E\n1,a,P2,I,extra\n")
    with pytest.raises(DataError, match=r"row 2: malformed file"):
        load_esci(folder)


def wands_folder(tmp_path, sep="\t", label_rows=None):
    folder = tmp_path / "wands"
    folder.mkdir(parents=True)
    (folder / "query.csv").write_text(sep.join(["query_id", "query", "query_class"]) + "\n"
                                      + sep.join(["0", "salon chair", "Massage Chairs"]) + "\n"
                                      + sep.join(["1", "outdoor rug", "Rugs"]) + "\n")
    (folder / "product.csv").write_text(
        sep.join(["product_id", "product_name", "product_class", "category hierarchy", "product_description",
                  "product_features"]) + "\n"
        + sep.join(["10", "hydraulic salon chair", "Chairs", "Furniture / Chairs", "a chair",
                    "color:black|material:steel"]) + "\n"
        + sep.join(["11", "jute rug", "Rugs", "Rugs / Area Rugs", "", "size:5x8"]) + "\n")
    rows = label_rows or [["0", "0", "10", "Exact"], ["1", "1", "11", "Partial"], ["2", "0", "11", "Irrelevant"]]
    (folder / "label.csv").write_text(sep.join(["id", "query_id", "product_id", "label"]) + "\n"
                                      + "".join(sep.join(r) + "\n" for r in rows))
    return folder


def test_wands_loader(tmp_path):
    d = load_wands(wands_folder(tmp_path))
    assert list(d["label"]) == ["Exact", "Partial", "Irrelevant"] and list(d["grade"]) == [3, 2, 1]
    assert d.loc[0, "colour"] == "black" and d.loc[0, "category"] == "Furniture > Chairs"
    assert d.loc[1, "query"] == "outdoor rug" and d.loc[2, "title"] == "jute rug"


def test_wands_wrong_delimiter_and_unknown_label(tmp_path):
    with pytest.raises(DataError, match=r"query.csv, field 'query_id': missing column.*delimiter"):
        load_wands(wands_folder(tmp_path, sep=","))
    with pytest.raises(DataError, match=r"label.csv, row 1, field 'label': unknown label 'Maybe'"):
        load_wands(wands_folder(tmp_path / "b", label_rows=[["0", "0", "10", "Maybe"]]))


def test_normalise_text():
    assert normalise_text(" A&amp;B <br/>  ﬁne\n") == "A&B fine"
    assert normalise_text(None) == "" and normalise_text(float("nan")) == ""


def test_curate_dedup_caps_and_report(tmp_path):
    ex = EX + [dict(EX[0], query="Red Shoes"), dict(EX[1], esci_label="S", query_id=9)]
    d = load_esci(write_esci(tmp_path / "e", ex, PR))
    cur, rep = curate(d, get_profile("smoke", max_title_chars=10, max_pairs=None))
    assert rep["duplicates_dropped"] == 2 and rep["conflicting_label_pairs"] == 1
    assert rep["rows_in"] == 5 and rep["rows_out"] == 3
    assert rep["truncated"]["title"] == 2
    assert cur.loc[0, "title"] == "Red …"  # cut at a word boundary under 10 characters


def test_split_is_query_disjoint_deterministic_and_complete():
    prof = get_profile("cpu")
    d, _ = curate(load_esci(REAL), prof)
    a = split_by_query(d, prof.split_fractions, prof.split_seed)
    b = split_by_query(d.sample(frac=1, random_state=3), prof.split_fractions, prof.split_seed)
    keys = {s: set(x["query_key"]) for s, x in a.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]
    assert sum(len(x) for x in a.values()) == len(d)
    assert [len(keys[s]) for s in ("train", "validation", "test")] == [84, 18, 18]
    for s in a:  # row order does not change the split
        assert set(a[s]["example_id"]) == set(b[s]["example_id"])
    other = split_by_query(d, prof.split_fractions, seed=prof.split_seed + 1)
    assert set(other["test"]["query_key"]) != keys["test"]
    rep = label_report(a)
    assert rep.loc["test", "pairs"] == len(a["test"]) and rep["pairs"].sum() == len(d)


def test_case_variants_of_a_query_share_a_split():
    d = pd.DataFrame({"query": ["Red shoes", "red shoes", "blue hat", "mug"], "example_id": list("abcd")})
    s = split_by_query(d, (0.34, 0.33, 0.33), seed=0)
    where = {e: name for name, x in s.items() for e in x["example_id"]}
    assert where["a"] == where["b"]


def test_prepare_and_load_splits(smoke):
    splits, rep = prepare_splits(smoke)
    assert rep["rows_out"] == 200 and rep["queries"] == 20  # 10 pairs a query, whole queries to 200
    assert all(len(s) > 0 for s in splits.values())
    again = load_splits(smoke)
    for s in splits:
        pd.testing.assert_frame_equal(splits[s][["example_id", "label"]], again[s][["example_id", "label"]])


def test_an_extra_folder_is_split_by_query_and_its_train_pairs_join_without_its_test_queries(smoke):
    from she_lib.config import REPO_ROOT
    from she_lib.data import folder_splits
    from she_lib.evaluate import external_set

    wide = str(REPO_ROOT / "data_samples" / "esci_us_wide")
    parts = folder_splits(smoke, wide)  # every pair (no caps), 673 queries cut 0.5 / 0.1 / 0.4 by the seeded hash
    queries = {s: set(d["query_key"]) for s, d in parts.items()}
    assert sum(len(d) for d in parts.values()) == 1553 and sum(map(len, queries.values())) == 673
    assert [len(queries[s]) for s in ("train", "validation", "test")] == [336, 67, 270]
    assert not (queries["train"] & queries["test"]) and not (queries["validation"] & queries["test"])
    base, joined = load_splits(smoke), load_splits(smoke.replace(extra_train_dirs=(wide,)))
    for s in ("train", "validation"):  # the main split's pairs first, then the folder's, in their order
        assert joined[s]["example_id"].tolist() == base[s]["example_id"].tolist() + parts[s]["example_id"].tolist()
    assert joined["test"]["example_id"].tolist() == base["test"]["example_id"].tolist()
    prof, test = external_set(smoke, wide, "test")  # what the pipeline scores: the folder's test split only
    assert test["example_id"].tolist() == parts["test"]["example_id"].tolist()
    assert prof.eval_split == "external_esci_us_wide" and prof.results_dir.endswith("esci_us_wide_test")
    assert len(external_set(smoke, wide)[1]) == 1553  # the whole folder (evaluate --data)


def test_splits_with_facts_of_another_version_are_rebuilt(smoke):
    from pathlib import Path

    prepare_splits(smoke)
    out = Path(smoke.processed_dir)
    stale = pd.read_parquet(out / "train.parquet").drop(columns=["negation_met"])
    stale.to_parquet(out / "train.parquet", index=False)
    report = json.loads((out / "curation_report.json").read_text())
    (out / "curation_report.json").write_text(json.dumps({**report, "facts_version": 1}))
    assert "negation_met" in load_splits(smoke)["train"]  # rebuilt, not read
    assert json.loads((out / "curation_report.json").read_text())["facts_version"] == report["facts_version"]


def test_facts_exact():
    assert split_query("nike shoes men without laces") == (["nike", "shoes", "men"], ["laces"])
    assert split_query("lights without wiring with switch") == (["lights", "switch"], ["wiring"])
    assert split_query("1/2 inch binder") == (["1/2", "inch", "binder"], [])
    f = example_facts({"query": "leather belts without buckles", "title": "Leather Belt with Buckle",
                       "brand": "X", "colour": "", "category": "Clothing > Belts", "bullets": ""})
    assert f == {"query_terms": ["leather", "belts"], "negated_terms": ["buckles"], "product_type": "Belts",
                 "matched_terms": ["leather", "belts"], "missing_terms": [], "negation_hits": ["buckles"],
                 "negation_met": []}
    g = example_facts({"query": "red mug", "title": "Big Blue Cup, ceramic", "brand": "", "colour": "",
                       "category": "", "bullets": ""})
    assert g["product_type"] == "Big Blue Cup" and g["missing_terms"] == ["red", "mug"]
    assert [stem(w) for w in ("buckles", "boxes", "glasses", "batteries", "shoes", "bus")] == [
        "buckle", "box", "glass", "battery", "shoe", "bus"]


def test_prompt_evidence_shows_the_facts_in_the_prompt(tmp_path):
    """with_evidence writes the facts as one line; the prompt shows it only when the row carries it; a profile with
    prompt_evidence loads splits that carry it."""
    import pandas as pd

    from she_lib.config import get_profile
    from she_lib.data import load_splits, with_evidence
    from she_lib.schema import user_prompt

    df = pd.DataFrame({"matched_terms": [["belt", "brown"], []], "missing_terms": [["leather"], ["x"]],
                       "negation_hits": [[], ["buckle"]]})
    assert with_evidence(df)["evidence"].tolist() == [
        "found: belt, brown; missing: leather", "found: none; missing: x; excluded but stated: buckle"]
    row = {"query": "brown belt", "title": "Belt", "evidence": "found: belt; missing: none"}
    assert user_prompt(row).endswith("\nEvidence: found: belt; missing: none")
    assert "Evidence" not in user_prompt({k: v for k, v in row.items() if k != "evidence"})
    prof = get_profile("smoke", processed_dir=str(tmp_path / "p"))
    assert "evidence" not in load_splits(prof)["train"]
    train = load_splits(prof.replace(prompt_evidence=True))["train"]
    assert train["evidence"].str.startswith("found: ").all()
