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

from bench.errors import FERBenchError
from bench.results.record import write_json_atomic

PROTOCOLS = ("fraction",)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def labeled_counts(class_sizes: list[int], protocol: str, budget: float) -> list[int]:
    """How many labeled images each class gets under a protocol and budget."""
    if protocol == "fraction":
        if not (0 < budget <= 1):
            raise FERBenchError(f"budget {budget!r} out of range for protocol 'fraction': expected 0 < budget <= 1")
        # Per-class stratified, at least one label per present class: max(1, round(f * n_c)).
        return [0 if n == 0 else min(n, max(1, _round_half_up(budget * n))) for n in class_sizes]
    raise FERBenchError(f"unknown label protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")


def make_split(
    dataset: str,
    dataset_fingerprint: str,
    ids: list[str],
    labels: np.ndarray,
    num_classes: int,
    protocol: str,
    budget: float,
    split_seed: int,
) -> dict[str, Any]:
    """The split manifest: labeled ids (in dataset order), per-class counts and the manifest's sha256."""
    labels = np.asarray(labels)
    sizes = [int((labels == c).sum()) for c in range(num_classes)]
    want = labeled_counts(sizes, protocol, budget)
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
        "protocol": protocol,
        "budget": budget,
        "split_seed": split_seed,
        "num_classes": num_classes,
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
