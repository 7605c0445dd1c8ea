"""Canonical label space (AffectNet order) and each dataset's map from its native codes.

See docs/guides/datasets.md#canonical-label-space: every dataset maps its native codes into this one space, so that
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

# AffectNet: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt; 8 None,
# 9 Uncertain, 10 No-Face are not expressions and are always dropped. The canonical space *is* AffectNet's.
AFFECTNET_NATIVE_NAMES: dict[int, str] = {i: name for i, name in enumerate(CANONICAL_CLASSES)}
AFFECTNET_NON_EXPRESSION: dict[int, str] = {8: "None", 9: "Uncertain", 10: "No-Face"}
AFFECTNET_TO_CANONICAL: dict[int, int] = {code: canonical_index(n) for code, n in AFFECTNET_NATIVE_NAMES.items()}

# FER2013 (`emotion` column of fer2013.csv): 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
FER2013_NATIVE_NAMES: dict[int, str] = {
    0: "Anger",
    1: "Disgust",
    2: "Fear",
    3: "Happy",
    4: "Sad",
    5: "Surprise",
    6: "Neutral",
}
FER2013_TO_CANONICAL: dict[int, int] = {code: canonical_index(n) for code, n in FER2013_NATIVE_NAMES.items()}

# FERPlus vote columns, in the order of fer2013new.csv and label.csv; the last two are not expressions.
FERPLUS_COLUMNS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
)
FERPLUS_NATIVE_NAMES: dict[int, str] = {
    0: "Neutral",
    1: "Happy",
    2: "Surprise",
    3: "Sad",
    4: "Anger",
    5: "Disgust",
    6: "Fear",
    7: "Contempt",
}
FERPLUS_TO_CANONICAL: dict[int, int] = {code: canonical_index(n) for code, n in FERPLUS_NATIVE_NAMES.items()}
