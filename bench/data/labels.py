"""Canonical label space (AffectNet order) and each dataset's map from its native codes.

See reference/harness.md §2.4: every dataset maps its native codes into this one space, so that
per-class results and cross-dataset comparisons refer to the same class index.
"""

from __future__ import annotations

CANONICAL_CLASSES: tuple[str, ...] = (
    "Neutral",
    "Happy",
    "Sad",
    "Surprise",
    "Fear",
    "Disgust",
    "Anger",
    "Contempt",
)

# RAF-DB basic: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAFDB_NATIVE_NAMES: dict[int, str] = {
    1: "Surprise",
    2: "Fear",
    3: "Disgust",
    4: "Happy",
    5: "Sad",
    6: "Anger",
    7: "Neutral",
}


def canonical_index(name: str) -> int:
    """Index of a class name in the canonical space."""
    return CANONICAL_CLASSES.index(name)


RAFDB_TO_CANONICAL: dict[int, int] = {code: canonical_index(n) for code, n in RAFDB_NATIVE_NAMES.items()}
