"""Label-budget protocols and split manifests.

A split is a pure function of (dataset content, protocol, budget, split_seed): it draws from its own
`numpy.random.default_rng`, never from the global training seed, so every method run with the same
seed uses the same labeled set. It is saved as a JSON manifest whose sha256 goes into each record.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import BUDGET_PROTOCOLS as PROTOCOLS
from bench.errors import FERBenchError
from bench.results.record import write_json_atomic

#: how dataset identities are made (bench/data/cache.py): of content; manifests without it hashed paths and times
IDENTITY = "content-v1"

#: `total`: the rarest class is drawn at this rate relative to the others (Ada-CM's RAF-DB splits give
#: Fear 10/40/100/200 labels where the other classes get 15/60/150/300).
RARE_CLASS_WEIGHT = 2 / 3
#: `total`: no class gives more than this share of its images as labels (Ada-CM caps Fear, 281 images,
#: at 250); caps of 100 or more are rounded down to a multiple of 10, which gives exactly that 250.
CLASS_CAP_FRACTION = 0.9


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def check_budget(protocol: str, budget: float) -> None:
    """A FERBenchError unless `budget` is a valid value for `protocol` (whatever the class sizes)."""
    if protocol == "fraction":
        if not (0 < budget <= 1):  # false for nan too
            raise FERBenchError(f"budget {budget!r} out of range for protocol 'fraction': expected 0 < budget <= 1")
    elif protocol in ("total", "per_class"):
        if not math.isfinite(budget) or budget != int(budget) or budget < 1:
            what = "labels in all" if protocol == "total" else "labels per class"
            raise FERBenchError(f"budget {budget!r} out of range for protocol {protocol!r}: expected a whole number "
                                f"of {what}, at least 1")
    else:
        raise FERBenchError(f"unknown budget protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")


def class_cap(n: int) -> int:
    """The most labels protocol `total` takes from a class of n images."""
    cap = math.floor(CLASS_CAP_FRACTION * n)
    return cap - cap % 10 if cap >= 100 else max(1, cap) if n else 0


def _total_counts(sizes: list[int], n_total: int, names: list[str]) -> list[int]:
    """Near-balanced counts summing to n_total: the rarest class weighted RARE_CLASS_WEIGHT, every class at
    most `class_cap` (water-filling: a capped class's surplus goes to the others), remainders by largest
    fractional share."""
    present = [c for c, n in enumerate(sizes) if n > 0]
    caps = [class_cap(n) for n in sizes]
    if n_total < len(present):
        raise FERBenchError(f"budget {n_total} too small for protocol 'total': at least one label for each of the "
                            f"{len(present)} classes")
    if n_total > sum(caps):
        raise FERBenchError(f"budget {n_total} too large for protocol 'total': at most {sum(caps)} labels (each class "
                            f"gives at most {CLASS_CAP_FRACTION:.0%} of its images: "
                            + ", ".join(f"{names[c]} {caps[c]}" for c in present) + ")")
    rarest = min(present, key=lambda c: (sizes[c], c))
    weight = {c: (RARE_CLASS_WEIGHT if c == rarest else 1.0) for c in present}
    capped: set[int] = set()
    level = 0.0
    while True:
        free = [c for c in present if c not in capped]
        if not free:  # the budget is every class's cap
            break
        level = (n_total - sum(caps[c] for c in capped)) / sum(weight[c] for c in free)
        newly = {c for c in free if weight[c] * level >= caps[c]}
        if not newly:
            break
        capped |= newly
    counts = [0] * len(sizes)
    for c in present:
        counts[c] = caps[c] if c in capped else math.floor(weight[c] * level + 1e-9)
    # hand out the remainder one label at a time, largest fractional share first (then larger classes)
    order = sorted(free, key=lambda c: (-(weight[c] * level - counts[c]), -sizes[c], c))
    i = 0
    while sum(counts) < n_total:
        c = order[i % len(order)]
        if counts[c] < caps[c]:
            counts[c] += 1
        i += 1
    return counts


def labeled_counts(class_sizes: list[int], protocol: str, budget: float,
                   class_names: list[str] | None = None) -> list[int]:
    """How many labeled images each class gets under a protocol and budget.

    fraction f:   max(1, round_half_up(f * n_c)) per class (SSFER's per-class fraction).
    total N:      N labels in all, near-balanced (see `_total_counts`; Ada-CM's RAF-DB splits).
    per_class k:  k labels of every class (LEAF); more than a class has is an error.
    """
    check_budget(protocol, budget)
    names = class_names or [f"class {c}" for c in range(len(class_sizes))]
    if protocol == "fraction":
        return [0 if n == 0 else min(n, max(1, _round_half_up(budget * n))) for n in class_sizes]
    if protocol == "total":
        return _total_counts(class_sizes, int(budget), names)
    k = int(budget)
    for c, n in enumerate(class_sizes):
        if k > n:
            raise FERBenchError(f"budget {k} too large for protocol 'per_class': class {names[c]} has only {n} "
                                "training images")
    return [k] * len(class_sizes)


def make_split(
    dataset: str,
    dataset_fingerprint: str,
    ids: list[str],
    labels: np.ndarray,
    num_classes: int,
    *,
    protocol: str,
    budget: float,
    split_seed: int,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The split manifest: labeled ids (in dataset order), per-class counts and the manifest's sha256."""
    labels = np.asarray(labels)
    sizes = [int((labels == c).sum()) for c in range(num_classes)]
    names = list(class_names) if class_names else None
    try:
        want = labeled_counts(sizes, protocol, budget, names)
    except FERBenchError as e:
        raise FERBenchError(f"dataset {dataset!r}: {e}") from None
    # The protocol name is part of the seed, so two protocols at the same seed draw independently.
    rng = np.random.default_rng([split_seed, int(hashlib.sha256(protocol.encode()).hexdigest()[:8], 16)])
    chosen: list[int] = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if want[c]:
            chosen.extend(rng.choice(members, size=want[c], replace=False).tolist())
    chosen.sort()
    body = {
        "dataset": dataset,
        "dataset_fingerprint": dataset_fingerprint,
        "identity": IDENTITY,  # the dataset fingerprint is made of content (bench/data/cache.py)
        "protocol": protocol,
        "budget": budget,
        "split_seed": split_seed,
        "num_classes": num_classes,
        "class_names": names,
        "class_sizes": sizes,
        "per_class_labeled": want,
        "n_labeled": len(chosen),
        "labeled_ids": [ids[i] for i in chosen],
    }
    sha = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {**body, "sha256": sha, "labeled_index": chosen}


def save_manifest(manifest: dict[str, Any], folder: str | Path) -> Path:
    """Write the manifest (without the index helper field) as <dataset>-<protocol><budget>-seed<k>-<sha12>.json."""
    m = {k: v for k, v in manifest.items() if k != "labeled_index"}
    name = f"{m['dataset']}-{m['protocol']}{m['budget']:g}-seed{m['split_seed']}-{m['sha256'][:12]}.json"
    path = Path(folder) / name
    if not path.exists():
        write_json_atomic(path, m)
    return path
