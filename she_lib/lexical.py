"""Lexical baseline: hand-made query-product match features and a gradient-boosted classifier.

The first thing a search engineer tries before any LLM. Each (query, product) pair becomes one row
of numeric features; a class-balanced classifier maps them to the grade words (``labels``).

Features (``feature_names`` lists them in order):

* ``bm25_title``, ``bm25_all``  Okapi BM25 of the query against the title and against all text
  (title, brand, colour, category, bullets, description). Corpus statistics (idf, mean document
  length) come from the *training* products only; each distinct query term counts once.
* ``bm25_*_norm``               the same divided by the sum of the query terms' idf (0..k1+1).
* ``cos_word_{title,all}``, ``cos_char_title`` TF-IDF cosine of the query vs title / all text on
  word n-grams and vs title on char n-grams (fitted on the training queries and products; char
  n-grams of all text cost ~10 s to fit and did not help on ESCI, so they are left out).
* ``in_{title,brand,colour,category,bullets,description,all}`` fraction of query content tokens
  found in that field; ``title_in_query`` fraction of title tokens found in the query;
  ``bigram_in_title`` fraction of query bigrams in the title; ``last_in_title`` /
  ``first_in_title`` whether the last / first query token (often the product type) is in the title;
  ``brand_in_query`` fraction of brand tokens the query mentions.
* ``match_pos`` relative position of the first query word in the title; ``for_before_match`` /
  ``title_has_linker`` a linker ("for", "compatible", "replacement", ...) precedes the first query
  word / occurs in the title: "Case for iPhone 12" is a Complement of "iphone 12".
* ``q_numbers``, ``num_match``  query numbers and the fraction of them found in the product text;
  ``unit_match`` / ``unit_mismatch`` query number+unit pairs (e.g. "32 oz") the product states with
  the same number / only with other numbers for that unit. ``negated_hit``: a word the query excludes
  ("without X", "not X") appears in the title.
* ``len_query``, ``len_title``, ``log_len_all``, ``empty_fields`` lengths and missing-field count.

Tokens are lower-cased alphanumerics with a trailing plural "s" removed. Everything is deterministic
given ``LexicalConfig.seed``. Default classifier: class-balanced HistGradientBoosting, chosen in a
development sweep over 10 random query splits of the ESCI sample, where it beat unweighted HGB and
logistic regression (balanced or not) on validation macro-F1 in most splits (not a committed benchmark).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

FIELDS = ("title", "brand", "colour", "category", "bullets", "description")
REQUIRED = ("query", *FIELDS)
STOP = frozenset("a an the for of in on to and or with by from at as is & w".split())
NEGATORS = frozenset({"without", "no", "not", "non"})
LINKERS = frozenset({"for", "compatible", "fit", "replacement", "accessory", "accessorie"})  # "case for X"
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_UNITS = {"oz": "oz", "ounce": "oz", "ounces": "oz", "lb": "lb", "lbs": "lb", "pound": "lb", "pounds": "lb",
          "in": "in", "inch": "in", "inches": "in", "ft": "ft", "feet": "ft", "foot": "ft", "mm": "mm",
          "cm": "cm", "ml": "ml", "l": "l", "liter": "l", "gallon": "gal", "gal": "gal", "qt": "qt",
          "gb": "gb", "tb": "tb", "w": "w", "watt": "w", "v": "v", "volt": "v", "mah": "mah", "pack": "pack",
          "pk": "pack", "count": "ct", "ct": "ct", "pcs": "pcs", "piece": "pcs", "pieces": "pcs"}
_NUM_UNIT = re.compile(r"(\d+(?:\.\d+)?)\s*-?\s*(" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\b")


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens, a trailing plural 's' removed ("shoes" -> "shoe")."""
    return [t[:-1] if len(t) > 3 and t.endswith("s") and not t.endswith("ss") else t
            for t in _TOKEN.findall(str(text).lower())]


def _num(x: str) -> str:
    return str(float(x)).removesuffix(".0")


class BM25:
    """Okapi BM25 with Lucene's non-negative idf, log(1 + (N - df + .5) / (df + .5)).

    A query term never seen in the fitted corpus gets the idf of df = 0 (the rarest possible)."""

    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b

    def fit(self, docs) -> BM25:
        toks = [tokenize(d) for d in docs]
        self.n = len(toks)
        doc_freq = Counter(t for doc in toks for t in set(doc))
        self.idf = {t: self._idf(f) for t, f in doc_freq.items()}
        self.avgdl = max(sum(map(len, toks)) / max(self.n, 1), 1e-9)
        return self

    def _idf(self, doc_freq: int) -> float:
        return float(np.log1p((self.n - doc_freq + 0.5) / (doc_freq + 0.5)))

    def score(self, query: str, doc: str) -> float:
        tokens = tokenize(doc)
        tf, norm = Counter(tokens), self.k1 * (1 - self.b + self.b * len(tokens) / self.avgdl)
        # each distinct query term once, in query order: a float sum over a set would change with PYTHONHASHSEED
        return sum(self.idf.get(t, self._idf(0)) * tf[t] * (self.k1 + 1) / (tf[t] + norm)
                   for t in dict.fromkeys(tokenize(query)))

    def idf_sum(self, query: str) -> float:
        return sum(self.idf.get(t, self._idf(0)) for t in dict.fromkeys(tokenize(query)))


@dataclass
class LexicalConfig:
    classifier: str = "hgb"  # "hgb" (HistGradientBoosting) or "logreg"
    class_weight: str | None = "balanced"  # or None
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (3, 5)
    max_text_chars: int = 3000  # all-text field cut for speed
    hgb_learning_rate: float = 0.05
    hgb_max_iter: int = 200
    hgb_max_leaf_nodes: int = 15
    hgb_min_samples_leaf: int = 20
    hgb_l2: float = 1.0
    logreg_c: float = 1.0
    seed: int = 13
    n_threads: int | None = 1  # OpenMP threads; more is slower on a small, shared CPU (None: all)


def _check(df: pd.DataFrame, cols) -> None:
    for c in cols:
        if c not in df.columns:
            raise ValueError(f"missing required column {c!r}; found {list(df.columns)}")


class LexicalBaseline:
    """Feature extractor + classifier; ``labels`` gives the order of ``predict_proba`` columns."""

    def __init__(self, config: LexicalConfig | None = None):
        self.config = config or LexicalConfig()
        self.labels: list[str] = []

    # ------------------------------------------------------------------------------ features
    @staticmethod
    def _texts(df: pd.DataFrame, max_chars: int) -> tuple[pd.DataFrame, list[str]]:
        _check(df, REQUIRED)
        d = df[list(REQUIRED)].fillna("").astype(str)
        return d, [" ".join(v)[:max_chars] for v in zip(*(d[c] for c in FIELDS))]

    def _fit_corpus(self, df: pd.DataFrame) -> None:
        c = self.config
        d, all_text = self._texts(df, c.max_text_chars)
        products = ~df.get("product_id", pd.Series(range(len(df)), index=df.index)).duplicated().to_numpy()
        titles, docs = d["title"][products].tolist(), [t for t, p in zip(all_text, products) if p]
        self.bm25_title = BM25(c.bm25_k1, c.bm25_b).fit(titles)
        self.bm25_all = BM25(c.bm25_k1, c.bm25_b).fit(docs)
        queries = d["query"].unique().tolist()
        self.tfidf_word = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None,
                                          ngram_range=c.word_ngrams, sublinear_tf=True).fit(docs + queries)
        self.tfidf_char = TfidfVectorizer(analyzer="char_wb", ngram_range=c.char_ngrams, sublinear_tf=True,
                                          min_df=2).fit(titles + queries)

    def features(self, df: pd.DataFrame) -> pd.DataFrame:
        d, all_text = self._texts(df, self.config.max_text_chars)
        q, title, f = d["query"].tolist(), d["title"].tolist(), {}
        for name, bm25, docs in (("title", self.bm25_title, title), ("all", self.bm25_all, all_text)):
            f[f"bm25_{name}"] = np.array([bm25.score(a, b) for a, b in zip(q, docs)])
            f[f"bm25_{name}_norm"] = f[f"bm25_{name}"] / np.maximum([bm25.idf_sum(a) for a in q], 1e-9)
        for name, vec, texts in (("word_title", self.tfidf_word, title), ("word_all", self.tfidf_word, all_text),
                                 ("char_title", self.tfidf_char, title)):
            # rows are L2-normalised, so the row-wise dot product is the cosine
            f[f"cos_{name}"] = np.asarray(vec.transform(q).multiply(vec.transform(texts)).sum(axis=1)).ravel()
        rows = [self._pair_features(r, a) for r, a in zip(d.itertuples(index=False), all_text)]
        return pd.DataFrame(f, index=df.index).join(pd.DataFrame(rows, index=df.index))

    @staticmethod
    def _pair_features(r, all_text: str) -> dict:
        q_all = tokenize(r.query)
        qt = [t for t in q_all if t not in STOP] or q_all
        fields = {name: set(tokenize(getattr(r, name))) for name in FIELDS}
        fields["all"] = set().union(*fields.values())
        out = {f"in_{name}": (sum(t in toks for t in qt) / len(qt) if qt else 0.0) for name, toks in fields.items()}
        title_toks, q_set = tokenize(r.title), set(q_all)
        out["title_in_query"] = sum(t in q_set for t in title_toks) / len(title_toks) if title_toks else 0.0
        bigrams = list(zip(q_all, q_all[1:]))
        title_bi = set(zip(title_toks, title_toks[1:]))
        out["bigram_in_title"] = sum(bg in title_bi for bg in bigrams) / len(bigrams) if bigrams else 0.0
        out["last_in_title"] = float(bool(qt) and qt[-1] in fields["title"])
        out["first_in_title"] = float(bool(qt) and qt[0] in fields["title"])
        hits = [i for i, t in enumerate(title_toks) if t in q_set and t not in STOP]
        first = hits[0] if hits else len(title_toks)
        out["match_pos"] = first / len(title_toks) if title_toks else 1.0
        out["for_before_match"] = float(any(t in LINKERS for t in title_toks[:first]))
        out["title_has_linker"] = float(any(t in LINKERS for t in title_toks))
        brand = fields["brand"]
        out["brand_in_query"] = len(brand & q_set) / len(brand) if brand else 0.0
        q_nums = {_num(x) for x in re.findall(r"\d+(?:\.\d+)?", r.query)}
        p_nums = {_num(x) for x in re.findall(r"\d+(?:\.\d+)?", all_text)}
        out["q_numbers"] = len(q_nums)
        out["num_match"] = len(q_nums & p_nums) / len(q_nums) if q_nums else 0.0
        q_units = {(_num(n), _UNITS[u]) for n, u in _NUM_UNIT.findall(r.query.lower())}
        p_units = {(_num(n), _UNITS[u]) for n, u in _NUM_UNIT.findall(all_text.lower())}
        p_unit_kinds = {u for _, u in p_units}
        out["unit_match"] = len(q_units & p_units)
        out["unit_mismatch"] = sum(u in p_unit_kinds and (n, u) not in p_units for n, u in q_units)
        negated = {b for a, b in zip(q_all, q_all[1:]) if a in NEGATORS and b not in STOP}
        out["negated_hit"] = float(bool(negated & fields["title"]))
        out["len_query"], out["len_title"] = len(q_all), len(title_toks)
        out["log_len_all"] = np.log1p(len(all_text))
        out["empty_fields"] = sum(not getattr(r, name).strip() for name in FIELDS)
        return out

    # --------------------------------------------------------------------------- classifier
    def _classifier(self):
        c = self.config
        if c.classifier == "hgb":
            return HistGradientBoostingClassifier(
                learning_rate=c.hgb_learning_rate, max_iter=c.hgb_max_iter, max_leaf_nodes=c.hgb_max_leaf_nodes,
                min_samples_leaf=c.hgb_min_samples_leaf, l2_regularization=c.hgb_l2,
                class_weight=c.class_weight, early_stopping=False, random_state=c.seed)
        if c.classifier == "logreg":
            return make_pipeline(StandardScaler(), LogisticRegression(
                C=c.logreg_c, class_weight=c.class_weight, max_iter=2000, random_state=c.seed))
        raise ValueError(f"unknown classifier {c.classifier!r}; choose 'hgb' or 'logreg'")

    def fit(self, train_df: pd.DataFrame) -> LexicalBaseline:
        _check(train_df, (*REQUIRED, "label"))
        if train_df["label"].isna().any() or len(train_df) == 0:
            raise ValueError("fit needs a non-empty training frame with a label in every row")
        if "grade" in train_df.columns:  # most relevant first, as in she_lib.labels
            order = train_df.groupby("label")["grade"].first().sort_values(ascending=False)
            self.labels = [str(w) for w in order.index]
        else:
            self.labels = sorted(train_df["label"].astype(str).unique())
        self._fit_corpus(train_df)
        x = self.features(train_df)
        self.feature_names = list(x.columns)
        y = train_df["label"].astype(str).map({w: i for i, w in enumerate(self.labels)}).to_numpy()
        with threadpool_limits(self.config.n_threads):
            self.model = self._classifier().fit(x.to_numpy(dtype=float), y)
        return self

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        if not self.labels:
            raise RuntimeError("LexicalBaseline is not fitted; call fit() first")
        _check(df, REQUIRED)
        proba = np.zeros((len(df), len(self.labels)))
        if len(df):
            x = self.features(df)[self.feature_names].to_numpy(dtype=float)
            with threadpool_limits(self.config.n_threads):
                proba[:, self.model.classes_] = self.model.predict_proba(x)
        return proba

    def predict(self, df: pd.DataFrame) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(df).argmax(axis=1)]

    def save(self, path) -> None:
        joblib.dump(self, path)

    @classmethod
    def load(cls, path) -> LexicalBaseline:
        obj = joblib.load(path)
        if not isinstance(obj, cls):
            raise TypeError(f"{path} holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj
