from __future__ import annotations

import numpy as np
import pytest

from bench.data.splits import labeled_counts, make_split, save_manifest
from bench.errors import FERBenchError

# 7 classes with RAF-like imbalance: sizes 10, 3, 40, 25, 7, 0 (absent), 15
LABELS = np.repeat(np.arange(7), [10, 3, 40, 25, 7, 0, 15])
IDS = [f"train_{i:05d}" for i in range(len(LABELS))]


def test_fraction_counts_are_stratified_and_at_least_one() -> None:
    # max(1, round_half_up(0.1 * n)): 10->1, 3->0.3->1, 40->4, 25->2.5->3, 7->0.7->1, absent->0, 15->1.5->2
    assert labeled_counts([10, 3, 40, 25, 7, 0, 15], "fraction", 0.1) == [1, 1, 4, 3, 1, 0, 2]
    assert labeled_counts([10, 3, 40, 25, 7, 0, 15], "fraction", 1.0) == [10, 3, 40, 25, 7, 0, 15]


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_budget_out_of_range(budget: float) -> None:
    with pytest.raises(FERBenchError, match=f"budget {budget!r} out of range for protocol 'fraction'"):
        labeled_counts([10], "fraction", budget)


def test_unknown_protocol() -> None:
    with pytest.raises(FERBenchError, match="unknown budget protocol 'percent'"):
        labeled_counts([10], "percent", 0.1)


def test_manifest_is_a_pure_function_of_its_inputs(tmp_path) -> None:
    a = make_split("d", "fp", IDS, LABELS, 7, protocol="fraction", budget=0.1, split_seed=3)
    b = make_split("d", "fp", IDS, LABELS, 7, protocol="fraction", budget=0.1, split_seed=3)
    c = make_split("d", "fp", IDS, LABELS, 7, protocol="fraction", budget=0.1, split_seed=4)
    assert a == b
    assert a["sha256"] != c["sha256"] and a["labeled_ids"] != c["labeled_ids"]
    assert a["per_class_labeled"] == [1, 1, 4, 3, 1, 0, 2] and a["n_labeled"] == 12
    chosen = np.asarray(a["labeled_index"])
    assert np.bincount(LABELS[chosen], minlength=7).tolist() == [1, 1, 4, 3, 1, 0, 2]
    assert len(set(a["labeled_ids"])) == 12
    # A different dataset content (fingerprint) is a different manifest.
    other = make_split("d", "fp2", IDS, LABELS, 7, protocol="fraction", budget=0.1, split_seed=3)
    assert other["sha256"] != a["sha256"]
    path = save_manifest(a, tmp_path)
    assert path.name == f"d-fraction0.1-seed3-{a['sha256'][:12]}.json"
    import hashlib
    import json

    saved = json.loads(path.read_text())
    body = {k: v for k, v in saved.items() if k != "sha256"}
    assert hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() == a["sha256"]


# RAF-DB basic train sizes in canonical order (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger).
RAFDB_TRAIN = [2524, 4772, 1982, 1290, 281, 717, 705]


@pytest.mark.parametrize(
    ("n", "fear", "others"),
    [(100, 10, 15), (400, 40, 60), (1000, 100, 150), (2000, 200, 300), (4000, 250, 625)],
)
def test_total_reproduces_adacm_rafdb_table(n: int, fear: int, others: int) -> None:
    # Ada-CM's README: fear/others = 10/15, 40/60, 100/150, 200/300, 250/625.
    counts = labeled_counts(RAFDB_TRAIN, "total", n)
    assert counts == [others] * 4 + [fear] + [others] * 2 and sum(counts) == n


def test_total_water_fills_capped_classes_and_hands_out_remainders() -> None:
    # sizes 10, 3, 5: caps floor(0.9 n) = 9, 2, 4; class 1 is rarest (weight 2/3).
    # level 10 / (2 + 2/3) = 3.75 -> class 1 wants 2.5 >= cap 2: capped; level (10 - 2) / 2 = 4 -> class 2
    # wants 4 >= cap 4: capped; class 0 gets the remaining 4.
    assert labeled_counts([10, 3, 5], "total", 10) == [4, 2, 4]
    # 98 labels on RAF-DB: level 98 / 6.667 = 14.7; floors 14 (fear 9.8 -> 9) = 93, 5 remainders by
    # largest fraction: fear (0.8), then the 0.7s by class size: Happy, Neutral, Sad, Surprise.
    assert labeled_counts(RAFDB_TRAIN, "total", 98) == [15, 15, 15, 15, 10, 14, 14]
    assert labeled_counts([10, 3, 0, 5], "total", 3) == [1, 1, 0, 1]  # absent classes get none
    assert labeled_counts([10, 3, 5], "total", 15) == [9, 2, 4]  # the whole budget at every cap: each class capped


def test_per_class_counts_and_errors() -> None:
    assert labeled_counts(RAFDB_TRAIN, "per_class", 14) == [14] * 7
    assert labeled_counts([5, 3], "per_class", 3) == [3, 3]
    with pytest.raises(FERBenchError, match="budget 4 too large for protocol 'per_class': class Fear has only 3"):
        labeled_counts([5, 3], "per_class", 4, ["Happy", "Fear"])


@pytest.mark.parametrize(
    ("protocol", "budget", "message"),
    [
        ("total", 2, "budget 2 too small for protocol 'total': at least one label for each of the 3 classes"),
        ("total", 16, "budget 16 too large for protocol 'total': at most 15 labels (each class gives at most 90% "
                      "of its images: A 9, B 2, C 4)"),
        ("total", 10.5, "budget 10.5 out of range for protocol 'total': expected a whole number of labels in all, "
                        "at least 1"),
        ("per_class", 0, "budget 0 out of range for protocol 'per_class': expected a whole number of labels per "
                         "class, at least 1"),
    ],
)
def test_count_budget_errors(protocol: str, budget: float, message: str) -> None:
    with pytest.raises(FERBenchError) as info:
        labeled_counts([10, 3, 5], protocol, budget, ["A", "B", "C"])
    assert str(info.value) == message


def test_manifest_records_per_class_counts_for_count_protocols() -> None:
    labels = np.repeat(np.arange(3), [10, 3, 5])
    ids = [f"x{i}" for i in range(len(labels))]
    m = make_split("d", "fp", ids, labels, 3, protocol="total", budget=10, split_seed=0, class_names=["A", "B", "C"])
    assert m["per_class_labeled"] == [4, 2, 4] and m["class_sizes"] == [10, 3, 5] and m["n_labeled"] == 10
    assert np.bincount(labels[m["labeled_index"]], minlength=3).tolist() == [4, 2, 4]
    assert m["class_names"] == ["A", "B", "C"]
    with pytest.raises(FERBenchError, match="dataset 'd': budget 6 too large for protocol 'per_class': class B"):
        make_split("d", "fp", ids, labels, 3, protocol="per_class", budget=6, split_seed=0, class_names=["A", "B", "C"])
