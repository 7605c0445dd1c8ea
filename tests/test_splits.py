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
    with pytest.raises(FERBenchError, match="unknown label protocol 'percent'"):
        labeled_counts([10], "percent", 0.1)


def test_manifest_is_a_pure_function_of_its_inputs(tmp_path) -> None:
    a = make_split("d", "fp", IDS, LABELS, 7, "fraction", 0.1, split_seed=3)
    b = make_split("d", "fp", IDS, LABELS, 7, "fraction", 0.1, split_seed=3)
    c = make_split("d", "fp", IDS, LABELS, 7, "fraction", 0.1, split_seed=4)
    assert a == b
    assert a["sha256"] != c["sha256"] and a["labeled_ids"] != c["labeled_ids"]
    assert a["per_class_labeled"] == [1, 1, 4, 3, 1, 0, 2] and a["n_labeled"] == 12
    chosen = np.asarray(a["labeled_index"])
    assert np.bincount(LABELS[chosen], minlength=7).tolist() == [1, 1, 4, 3, 1, 0, 2]
    assert len(set(a["labeled_ids"])) == 12
    # A different dataset content (fingerprint) is a different manifest.
    assert make_split("d", "fp2", IDS, LABELS, 7, "fraction", 0.1, 3)["sha256"] != a["sha256"]
    path = save_manifest(a, tmp_path)
    assert path.name == f"d-fraction0.1-seed3-{a['sha256'][:12]}.json"
    import hashlib
    import json

    saved = json.loads(path.read_text())
    body = {k: v for k, v in saved.items() if k != "sha256"}
    assert hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() == a["sha256"]
