"""Tests for she_lib.lexical: BM25 by hand, feature sanity, fit/predict, save/load, errors."""
import math
import random

import numpy as np
import pandas as pd
import pytest

from she_lib.lexical import BM25, LexicalBaseline, LexicalConfig, tokenize

GRADES = {"Exact": 4, "Substitute": 3, "Complement": 2, "Irrelevant": 1}
COLOURS = ["red", "blue", "green", "black", "white", "pink", "grey", "yellow"]
TYPES = ["shoe", "lamp", "chair", "kettle", "jacket", "backpack", "blender", "pillow", "mug", "rug"]
BRANDS = ["Acme", "Zento", "Lumo", "Korva", "Brisk"]


def synthetic(n_queries: int, seed: int) -> pd.DataFrame:
    """Each query "<colour> <type>" gets one product of each grade, told apart by word overlap."""
    rng, rows = random.Random(seed), []
    for qi in range(n_queries):
        colour, kind = rng.choice(COLOURS), rng.choice(TYPES)
        other_colour = rng.choice([c for c in COLOURS if c != colour])
        other_kind = rng.choice([t for t in TYPES if t != kind])
        brand = rng.choice(BRANDS)
        titles = {"Exact": (f"{brand} {colour} {kind} classic", colour),
                  "Substitute": (f"{brand} {other_colour} {kind} classic", other_colour),
                  "Complement": (f"cleaning kit for {colour} {kind}", ""),
                  "Irrelevant": (f"{brand} {other_colour} {other_kind}", other_colour)}
        for label, (title, col) in titles.items():
            rows.append(dict(example_id=f"{qi}:{label}", query_id=str(qi), query=f"{colour} {kind}",
                             product_id=f"p{qi}{label[0]}", title=title, brand=brand, colour=col,
                             category=f"Home > {kind.title()}" if label != "Irrelevant" else "Home > Misc",
                             bullets="" if qi % 2 else f"a {title}", description="", label=label,
                             grade=GRADES[label]))
    return pd.DataFrame(rows)


FAST = LexicalConfig(hgb_max_iter=40, hgb_min_samples_leaf=5)


@pytest.fixture(scope="module")
def fitted():
    train, test = synthetic(40, seed=0), synthetic(12, seed=1)
    return LexicalBaseline(FAST).fit(train), test


def test_bm25_hand_computed():
    # corpus: [red shoe] [blue shoe shoe] [red hat]; N = 3, avgdl = 7/3, k1 = 1.2, b = 0.75
    bm25 = BM25(k1=1.2, b=0.75).fit(["red shoe", "blue shoe shoe", "red hat"])
    assert bm25.avgdl == pytest.approx(7 / 3)
    idf_df2 = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # red, shoe: in 2 of 3 docs -> log(1.6)
    # doc 2, dl = 3: norm = 1.2 * (0.25 + 0.75 * 3 / (7/3)) = 51/35; shoe tf = 2 -> 2 * 2.2 / (2 + 51/35) = 154/121
    assert bm25.score("red shoe", "blue shoe shoe") == pytest.approx(idf_df2 * 154 / 121)
    # doc 3, dl = 2: norm = 1.2 * (0.25 + 0.75 * 2 / (7/3)) = 15/14; red tf = 1 -> 2.2 / (1 + 15/14) = 30.8/29
    assert bm25.score("red shoe", "red hat") == pytest.approx(idf_df2 * 30.8 / 29)
    # a repeated query term counts once; an unseen term gets idf(df=0) = log(8) but tf = 0 here
    assert bm25.score("red red shoe", "red hat") == pytest.approx(idf_df2 * 30.8 / 29)  # as "red shoe" above
    assert bm25.idf_sum("green red") == pytest.approx(math.log(8) + math.log(1.6))
    assert bm25.score("", "red hat") == 0.0 and bm25.score("red", "") == 0.0


def test_tokenize():
    assert tokenize("Red SHOES, 3.5oz glass") == ["red", "shoe", "3.5", "oz", "glass"]
    assert tokenize("") == []


def test_identical_query_and_title_give_full_overlap(fitted):
    model, _ = fitted
    row = dict(query="blue kettle", title="blue kettle", brand="", colour="", category="",
               bullets="", description="")
    f = model.features(pd.DataFrame([row])).iloc[0]
    assert f["in_title"] == 1.0 and f["in_all"] == 1.0 and f["title_in_query"] == 1.0
    assert f["bigram_in_title"] == 1.0 and f["last_in_title"] == 1.0 and f["match_pos"] == 0.0
    assert f["cos_word_title"] == pytest.approx(1.0) and f["cos_char_title"] == pytest.approx(1.0)
    assert f["in_brand"] == 0.0 and f["empty_fields"] == 5


def test_number_unit_features(fitted):
    model, _ = fitted
    base = dict(query="olive oil 32 oz", brand="", colour="", category="", bullets="", description="")
    f = model.features(pd.DataFrame([{**base, "title": "Olive Oil, 32oz bottle"},
                                     {**base, "title": "Olive Oil 16 oz"}]))
    assert list(f["unit_match"]) == [1, 0] and list(f["unit_mismatch"]) == [0, 1]
    assert list(f["num_match"]) == [1.0, 0.0]


def test_empty_strings_and_nan_are_handled(fitted):
    model, _ = fitted
    df = pd.DataFrame([dict(query="", title="", brand="", colour="", category="", bullets="", description=""),
                       dict(query="red shoe", title="Red shoe", brand=None, colour=np.nan, category="",
                            bullets="", description="")])
    f = model.features(df)
    assert np.isfinite(f.to_numpy(dtype=float)).all()
    assert model.predict_proba(df).shape == (2, 4)
    assert model.predict_proba(df.iloc[:0]).shape == (0, 4)


def test_fit_predict_learns_synthetic_labels(fitted):
    model, test = fitted
    assert model.labels == ["Exact", "Substitute", "Complement", "Irrelevant"]
    proba = model.predict_proba(test)
    assert proba.shape == (len(test), 4)
    assert np.allclose(proba.sum(axis=1), 1.0) and (proba >= 0).all()
    pred = model.predict(test)
    assert set(pred) <= set(model.labels) and len(pred) == len(test)
    accuracy = np.mean(np.array(pred) == test["label"].to_numpy())
    assert accuracy > 0.6  # chance is 0.25


def test_logreg_and_determinism():
    train, test = synthetic(30, seed=2), synthetic(6, seed=3)
    cfg = LexicalConfig(classifier="logreg", class_weight=None)
    a, b = LexicalBaseline(cfg).fit(train), LexicalBaseline(cfg).fit(train)
    assert np.array_equal(a.predict_proba(test), b.predict_proba(test))
    assert np.mean(np.array(a.predict(test)) == test["label"].to_numpy()) > 0.5


def test_save_load_round_trip(fitted, tmp_path):
    model, test = fitted
    model.save(tmp_path / "lexical.joblib")
    loaded = LexicalBaseline.load(tmp_path / "lexical.joblib")
    assert loaded.labels == model.labels and loaded.config == model.config
    assert np.array_equal(loaded.predict_proba(test), model.predict_proba(test))


def test_missing_column_raises(fitted):
    model, test = fitted
    with pytest.raises(ValueError, match="'colour'"):
        model.predict(test.drop(columns=["colour"]))
    with pytest.raises(ValueError, match="'label'"):
        LexicalBaseline(FAST).fit(test.drop(columns=["label"]))
    with pytest.raises(ValueError, match="classifier"):
        LexicalBaseline(LexicalConfig(classifier="svm")).fit(test)


def test_features_do_not_depend_on_the_hash_seed():
    """Float sums over Python sets change with PYTHONHASHSEED; features must not."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, numpy as np, pandas as pd; from she_lib.lexical import LexicalBaseline, LexicalConfig;"
            "d = pd.DataFrame({'query': ['red running shoes men', 'blue mug 12 oz', 'usb c cable 6 ft'] * 4,"
            "'title': ['Men Running Shoe Red', 'Coffee Mug Blue 12oz', 'USB-C Cable 6ft', 'Hat'] * 3,"
            "'brand': ['A', 'B', 'C'] * 4, 'colour': ['red', 'blue', ''] * 4, 'category': ['x > y'] * 12,"
            "'bullets': [''] * 12, 'description': [''] * 12,"
            "'label': ['Exact', 'Substitute', 'Irrelevant', 'Complement'] * 3});"
            "m = LexicalBaseline(LexicalConfig()).fit(d);"
            "print(hashlib.md5(np.asarray(m.features(d), dtype=np.float64).tobytes()).hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONHASHSEED": s}) for s in ("1", "2", "3")]  # side by side
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    outs = {out for out, _ in results}
    assert len(outs) == 1 and len(outs.pop().strip()) == 32  # one md5 hex digest for every seed
