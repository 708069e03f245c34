"""Grade scales: the one table that maps raw data labels to the words the model writes.

ESCI's four labels map onto the four Taobao grades in the same order (DESIGN.md):
Exact <-> 4 Excellent, Substitute <-> 3 Related, Complement <-> 2 Mismatch, Irrelevant <-> 1 Irrelevant.
WANDS has three: Exact (3), Partial (2), Irrelevant (1).  The model writes the *word*; the grade
number is the word's rank on the ordinal scale (higher is more relevant).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GradeScale:
    name: str
    words: tuple[str, ...]  # most relevant first
    raw_to_word: dict  # raw label in the data file -> word
    taobao: dict  # word -> Taobao grade name (documentation and reports)

    @property
    def grades(self) -> dict[str, int]:
        """word -> ordinal grade, e.g. {'Exact': 4, ..., 'Irrelevant': 1}."""
        n = len(self.words)
        return {w: n - i for i, w in enumerate(self.words)}

    def word(self, raw) -> str:
        """Map a raw label (e.g. 'E', 'exact', 100) to its word; raise KeyError if unknown."""
        key = raw.strip() if isinstance(raw, str) else raw
        if key in self.raw_to_word:
            return self.raw_to_word[key]
        if isinstance(key, str):
            for k, v in self.raw_to_word.items():
                if isinstance(k, str) and k.lower() == key.lower():
                    return v
        raise KeyError(f"unknown label {raw!r} for grade scale {self.name!r}; "
                       f"known: {sorted(map(str, self.raw_to_word))}")

    def find(self, text: str) -> str | None:
        """The scale word that ``text`` names (case-insensitive, whole text), else None."""
        t = text.strip().strip(".:").lower()
        for w in self.words:
            if t == w.lower():
                return w
        return None


ESCI = GradeScale(
    name="esci",
    words=("Exact", "Substitute", "Complement", "Irrelevant"),
    raw_to_word={"E": "Exact", "S": "Substitute", "C": "Complement", "I": "Irrelevant",
                 "Exact": "Exact", "Substitute": "Substitute", "Complement": "Complement",
                 "Irrelevant": "Irrelevant"},
    taobao={"Exact": "4-Excellent", "Substitute": "3-Related", "Complement": "2-Mismatch",
            "Irrelevant": "1-Irrelevant"},
)

WANDS = GradeScale(
    name="wands",
    words=("Exact", "Partial", "Irrelevant"),
    raw_to_word={"Exact": "Exact", "Partial": "Partial", "Irrelevant": "Irrelevant"},
    taobao={"Exact": "4-Excellent", "Partial": "3-Related", "Irrelevant": "1-Irrelevant"},
)

SCALES: dict[str, GradeScale] = {"esci": ESCI, "wands": WANDS}


def get_scale(name: str | GradeScale) -> GradeScale:
    """The scale named ``name`` (a key of :data:`SCALES`); a :class:`GradeScale` is returned as it is."""
    if isinstance(name, GradeScale):
        return name
    if name not in SCALES:
        raise KeyError(f"unknown grade scale {name!r}; choose one of {sorted(SCALES)}")
    return SCALES[name]
