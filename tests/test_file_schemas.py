"""Files FERBench reads back are checked at the boundary (issue 32): a run record or a fingerprint cache that is not
what its schema says is one line naming the file and the field, never a traceback and never silently accepted; a
record is never written with a fingerprint that is not its own."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_overrides
from test_leaderboard import make_record
from test_reported import write_records

from bench.cli import main
from bench.config import build_config
from bench.engine.codestate import PROBE_VERSION, code_state
from bench.engine.fingerprint import _cache_file, cached_fingerprints, fingerprint_key
from bench.results.record import digest, read_record_file


def _fingerprint(key: str, vector: list[float] | None = None) -> dict[str, Any]:
    vector = [0.25, 0.5, 0.75] if vector is None else vector
    return {"key": key, "probe": PROBE_VERSION, "digest": digest(vector, {}), "vector": vector,
            "labels": [f"v{i}" for i in range(len(vector))], "exact": {}, "source": code_state()[:16]}


def _set(rec: dict, path: str, value: Any) -> dict:
    *parents, last = path.split(".")
    node = rec
    for p in parents:
        node = node[p]
    node[last] = value
    return rec


def _one_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ferbench: error: "), stderr
    return lines[0]


WRONG: list[tuple[str, Any, str]] = [
    ("run_id", 12, r"run_id: input should be a valid string \(got 12\)"),
    ("config", "method=fixmatch", "config: input should be a valid dictionary"),
    ("artifacts", "final_model.pth", "artifacts: input should be a valid dictionary"),
    ("predictions", "preds.npy", "predictions: input should be a valid dictionary"),
    ("metrics.final.accuracy", "0.7", "metrics.final.accuracy: input should be a valid number"),
    ("history", {"step": 1}, "history: input should be a valid list"),
    ("fingerprint", "current", "fingerprint: input should be a valid dictionary"),
    ("fingerprint", {"key": "k"}, "fingerprint.probe: field required"),
    ("fingerprint", {**_fingerprint("k"), "vector": []}, "fingerprint.vector: no values"),
    ("fingerprint", {**_fingerprint("k"), "vector": ["a", "b", "c"]}, "fingerprint.vector.0: input should be"),
    ("fingerprint", {**_fingerprint("k"), "labels": ["a"]}, "fingerprint.labels: 1 labels for 3 values"),
    ("fingerprint", {**_fingerprint("k"), "vector": [0.25, 0.5, 0.8]}, "fingerprint.digest: .* does not name"),
]


@pytest.mark.parametrize(("field", "value", "says"), WRONG, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(WRONG)])
def test_a_record_of_the_wrong_shape_is_one_line_naming_file_and_field(tmp_path: Path, capsys, field: str,
                                                                       value: Any, says: str) -> None:
    good = make_record("supervised", 0, 0.6, fingerprint=_fingerprint("supervised@harness#00000000"))
    records = write_records([good], tmp_path / "records")
    bad = records / "fixmatch_synthfer_fraction0.02_s0_0123456789.json"
    bad.write_text(json.dumps(_set(make_record("fixmatch", 0, 0.7), field, value)))
    assert main(["leaderboard", str(records), "-o", str(tmp_path / "lb")]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"{bad}: not a valid run record: " in line and re.search(says, line), line
    assert not (tmp_path / "lb").exists()


@pytest.mark.parametrize("content", [b'{"schema": "ferbench.record/1", "run_id": "x", "met', b"\x89PNG\r\n\x1a\n\xff"],
                         ids=["truncated", "binary"])
@pytest.mark.parametrize("command", ["leaderboard", "status"])
def test_a_truncated_or_binary_record_is_one_line(tmp_path: Path, capsys, content: bytes, command: str) -> None:
    records = write_records([make_record("supervised", 0, 0.6)], tmp_path / "records")
    (records / "broken.json").write_bytes(content)
    args = [str(records), "-o", str(tmp_path / "lb")] if command == "leaderboard" else [str(tmp_path), "--no-probe"]
    assert main([command, *args]) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(records / "broken.json") in line and ("not valid JSON" in line or "not a text file" in line)
    assert not (tmp_path / "lb").exists()


def test_status_refuses_a_record_with_a_forged_fingerprint(tmp_path: Path, capsys) -> None:
    """A fingerprint without values once made `status` count its record current."""
    rec = make_record("supervised", 0, 0.6, fingerprint={**_fingerprint("k"), "vector": [], "labels": []})
    write_records([rec], tmp_path / "records")
    assert main(["status", str(tmp_path), "--no-probe"]) == 2
    assert "fingerprint.vector: no values" in _one_error(capsys.readouterr().err)


def test_records_of_a_newer_schema_are_said_on_stderr_by_status_and_leaderboard(tmp_path: Path, capsys) -> None:
    records = write_records([make_record("supervised", 0, 0.6),
                             {**make_record("fixmatch", 0, 0.7), "schema": "ferbench.record/2"}], tmp_path / "records")
    assert main(["leaderboard", str(records), "-o", str(tmp_path / "lb")]) == 0
    assert "skipped 1 record(s) of a newer schema" in capsys.readouterr().err
    assert main(["status", str(tmp_path), "--no-probe"]) == 0
    assert "skipped 1 record(s) of a newer schema" in capsys.readouterr().err


# ---- the fingerprint cache -----------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FERBENCH_CACHE", str(tmp_path / "cache"))
    path = _cache_file(code_state())
    path.parent.mkdir(parents=True)
    return path


@pytest.mark.parametrize(("content", "says"), [
    (b"\x00\x01\x02\xff", "not a text file"),
    (b"[1, 2, 3]", "not a mapping of keys to fingerprints (a list)"),
    (b'{"a": ', "not valid JSON"),
], ids=["binary", "list", "truncated"])
def test_a_damaged_cache_file_is_recomputed_saying_so(cache: Path, capsys, content: bytes, says: str) -> None:
    cache.write_bytes(content)
    assert cached_fingerprints()[1] == {}
    err = capsys.readouterr().err
    assert says in err and str(cache) in err and len(err.strip().splitlines()) == 1


def test_cache_entries_that_are_not_their_keys_fingerprint_are_dropped(cache: Path, capsys) -> None:
    good = _fingerprint("a@harness#00000000")
    entries = {
        "a@harness#00000000": good,
        "b@harness#00000000": _fingerprint("a@harness#00000000"),  # another key's
        "c@harness#00000000": {**_fingerprint("c@harness#00000000"), "vector": ["x", "y", "z"]},
        "d@harness#00000000": {**_fingerprint("d@harness#00000000"), "vector": [0.5]},  # too short for its labels
        "e@harness#00000000": {k: v for k, v in _fingerprint("e@harness#00000000").items() if k != "key"},
        "f@harness#00000000": "garbage",
        "g@harness#00000000": {**_fingerprint("g@harness#00000000"), "probe": PROBE_VERSION - 1},
        "h@harness#00000000": {**_fingerprint("h@harness#00000000"), "source": "0" * 16},
    }
    cache.write_text(json.dumps(entries))
    assert cached_fingerprints()[1] == {"a@harness#00000000": good}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "7 of 8 cached fingerprint(s) not valid" in err[0] and str(cache) in err[0]


def test_a_run_never_records_a_cached_fingerprint_of_another_key(shared_cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache entry filed under the run's key but holding another key's fingerprint is probed again, not copied
    into the record."""
    monkeypatch.setenv("FERBENCH_CACHE", str(shared_cache))
    args = tiny_overrides(shared_cache, tmp_path / "out", method="supervised")
    key = fingerprint_key(build_config(overrides=args))
    path = _cache_file(code_state())
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = path.read_bytes() if path.is_file() else None
    entries = json.loads(kept) if kept else {}
    path.write_text(json.dumps({**entries, key: _fingerprint("fixmatch@harness#00000000")}))
    try:
        assert main(["run", "--quiet", *args]) == 0
    finally:
        if kept is None:
            path.unlink()
        else:
            path.write_bytes(kept)
    rec = read_record_file(next((tmp_path / "out" / "records").glob("*.json")))
    assert rec["fingerprint"]["key"] == key and "vector" in rec["fingerprint"]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b'["running"]'], ids=["binary", "list"])
def test_a_binary_or_mistyped_status_file_is_one_line(tmp_path: Path, capsys, content: bytes) -> None:
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "fixmatch_x.json").write_bytes(content)
    assert main(["status", str(tmp_path), "--no-probe"]) == 2
    assert "a truncated or damaged status file" in _one_error(capsys.readouterr().err)
