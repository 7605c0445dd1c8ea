"""Where two runs of one config first differ: every logged value at every log step, every evaluation, the final
metrics, each stage's end weights checksum and the final weights, in that order."""

from __future__ import annotations

from typing import Any

import torch

#: record fields that measure the machine, not the run (they differ between any two runs)
_TIMING = frozenset({"images_per_s", "wall_time_s", "train_time_s", "eval_time_s", "time_s"})


def _value_difference(where: str, a: Any, b: Any) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k in _TIMING:
                continue
            if k not in a or k not in b:
                return f"{where}{k}: only in the {'uninterrupted' if k in a else 'resumed'} run"
            found = _value_difference(f"{where}{k}.", a[k], b[k])
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where.rstrip('.')}: {len(a)} entries vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _value_difference(f"{where}{i}.", x, y)
            if found:
                return found
        return None
    return None if a == b else f"{where.rstrip('.')}: {a!r} uninterrupted vs {b!r} resumed"


def _logged_difference(a: list[dict[str, Any]], b: list[dict[str, Any]], what: str) -> str | None:
    """The first logged value (by step, then name) that differs between two lists of per-step entries."""
    steps_a, steps_b = [e.get("step") for e in a], [e.get("step") for e in b]
    if steps_a != steps_b:
        return f"{what} at steps {steps_a} vs {steps_b}"
    for x, y in zip(a, b, strict=True):
        found = _value_difference(f"{what} at step {x.get('step')}: ", x, y)
        if found:
            return found
    return None


def first_difference(straight: dict[str, Any], resumed: dict[str, Any] | None, weights_a: dict[str, torch.Tensor],
                     weights_b: dict[str, torch.Tensor]) -> str | None:
    """The first thing in which the resumed run differs from the uninterrupted one, in words; None when none does."""
    if resumed is None:
        return "the resumed run did not finish"
    for what in ("curves", "history"):
        found = _logged_difference(straight.get(what) or [], resumed.get(what) or [], what)
        if found:
            return found
    found = _value_difference("metrics.", straight.get("metrics"), resumed.get("metrics"))
    if found:
        return found
    for sa, sb in zip(straight.get("stages") or [], resumed.get("stages") or [], strict=False):
        if sa.get("end_checksum") != sb.get("end_checksum"):
            return f"stage {sa.get('name')}'s end weights checksum {sa.get('end_checksum')} vs {sb.get('end_checksum')}"
    if set(weights_a) != set(weights_b):
        return f"final weights hold other tensors ({sorted(set(weights_a) ^ set(weights_b))[:3]})"
    for k in weights_a:
        if not torch.equal(weights_a[k], weights_b[k]):
            return f"final weights differ (first: {k})"
    return None
