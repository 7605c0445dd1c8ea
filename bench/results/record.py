"""Run records: one JSON file per run, written atomically, named by its run id; their schema (`Record`) is the one
the trainer writes, and `record_problem` is the one check of a record, whoever reads it: record files
(`read_record`: leaderboards, exports, `ferbench status`, a rerun) and the records the leaderboards are handed
(`bench.results.aggregate.parse_run`).

Accuracies are fractions in [0, 1]. Keys added after the first records were written are `NotRequired`: a record
written before them still reads. A record of a newer schema version than this code knows is not read (the
readers say how many they skipped and why).
"""


# no `from __future__ import annotations`: TypedDict reads NotRequired from evaluated annotations only
import functools
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# pydantic reads NotRequired only from typing_extensions' TypedDict before Python 3.12
from typing_extensions import NotRequired, TypedDict

from bench.bundles import HARNESS
from bench.errors import FERBenchError

SCHEMA = "ferbench.record/1"
_SCHEMA = re.compile(r"^ferbench\.record/(\d+)$")
SCHEMA_VERSION = 1
#: how records name their dataset, method, protocol and recipe: also a file name and a table key
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SplitInfo(TypedDict):
    manifest_sha256: str
    manifest_file: NotRequired[str | None]
    # the dataset's identity and how it was made ("content-v1"); absent in records written before identities were
    # made of content (their manifests hashed paths and file times)
    dataset_identity: NotRequired[str]
    identity: NotRequired[str | None]
    n_labeled: int
    n_unlabeled: int
    per_class_labeled: list[int]


class FinalMetrics(TypedDict):
    accuracy: float
    mean_class_accuracy: float
    macro_f1: float
    per_class_recall: list[float]
    confusion_matrix: list[list[int]]


class Metrics(TypedDict):
    final: FinalMetrics
    last5_median_accuracy: float
    best_accuracy: float  # best-on-test: secondary, flagged
    best_step: int
    n_test: int


class Predictions(TypedDict):
    """Per-test-image targets and predictions of the final model, `<run_id>.<sha12>.predictions.npy` beside the
    record."""

    file: str
    sha256: str
    n: int
    test_ids_sha256: str


class ProbedFingerprint(TypedDict):
    """The behaviour of the code that trained a run (bench/engine/fingerprint.py); `digest` names `vector` and
    `exact` (`digest()`), `labels` names each value."""

    key: str
    probe: int
    digest: str
    vector: list[float]
    labels: list[str]
    exact: NotRequired[dict[str, str]]
    settings: NotRequired[dict[str, Any]]
    source: NotRequired[str]
    live: NotRequired[dict[str, Any]]


class UnavailableFingerprint(TypedDict):
    """A probe that could not run, and why."""

    unavailable: str
    key: NotRequired[str]
    probe: NotRequired[int]
    settings: NotRequired[dict[str, Any]]
    source: NotRequired[str]


Fingerprint = ProbedFingerprint | UnavailableFingerprint


class Record(TypedDict):
    schema: str  # "ferbench.record/1"
    run_id: str  # "<method>[-<recipe>]_<dataset>_<protocol><budget>_s<seed>_<hash10>"
    method: str
    recipe: NotRequired[str]  # the protocol: "harness" or a reference recipe (absent: harness)
    dataset: str  # with a non-default label protocol in its name (ferplus-argmax7)
    label_protocol: NotRequired[str | None]
    protocol: str
    budget: float
    seed: int
    split_seed: int
    class_names: list[str]  # index = label index used in metrics
    native_codes: NotRequired[dict[str, int] | None]  # canonical class -> the dataset's own label code
    split: SplitInfo
    config: dict[str, Any]  # the resolved run config (bench.config)
    method_hparams: dict[str, Any]  # every argument of the method
    method_info: NotRequired[dict[str, Any]]  # facts such as the text encoder loaded
    preset: NotRequired[str | None]
    backbone: str
    pretrained_file: NotRequired[str | None]
    pretrained: NotRequired[dict[str, Any] | None]  # what model.pretrained_file loaded (bench/engine/pretrained.py)
    image_size: int
    world_size: int
    iterations: int  # all stages together
    global_batch: dict[str, int]  # {"labeled": B, "unlabeled": mu * B} of the stage the metrics come from
    metrics: Metrics
    history: list[dict[str, float]]  # every evaluation: step, accuracy, mean_class_accuracy, macro_f1
    curves: list[dict[str, float]]  # every log step: step, loss, lr, the method's logs
    stages: NotRequired[list[dict[str, Any]]]  # multi-stage methods: each stage's summary
    # each process lifetime: its start step, the steps it ran, and whether the checkpoint it resumed from could not
    # be verified as this run's (written before checkpoints named their run)
    sessions: NotRequired[list[dict[str, Any]]]
    distributed: NotRequired[dict[str, Any]]  # type, backend, zero_stage, method_state_checks
    performance: NotRequired[dict[str, Any]]  # how the run was made fast (bench/engine/performance.py)
    predictions: NotRequired[Predictions]
    # the files the run left beside its record, each checked when a rerun finds the record: {"final_model": {"file":
    # path relative to the record's folder, "sha256": str, "bytes": int}}
    artifacts: NotRequired[dict[str, dict[str, Any]]]
    wall_time_s: float
    train_time_s: NotRequired[float]
    images_per_s: float
    versions: dict[str, str | None]
    git_commit: str | None
    # the behaviour of the code that trained it: key (method@recipe and non-default arguments), probe version,
    # digest, vector, labels, exact, settings, live, source (bench/engine/fingerprint.py); or `unavailable` with why.
    # Checked as a `Fingerprint` of its own (`fingerprint_problem`)
    fingerprint: NotRequired[dict[str, Any]]
    # each tracker the run logged to: "received" (every log and the final results) or what failed, and when
    trackers: NotRequired[dict[str, str]]
    host: dict[str, Any]
    created_utc: str


class FutureRecord(FERBenchError):
    """A record of a newer schema version than this code reads."""


def schema_version(data: Any) -> int | None:
    """The record schema version of a parsed JSON file, or None when it is not a run record."""
    m = _SCHEMA.match(str(data.get("schema", ""))) if isinstance(data, dict) else None
    return int(m.group(1)) if m else None


#: significant digits of a fingerprint's digest
DIGITS = 4


def digest(vector: list[float], exact: dict[str, str] | None = None) -> str:
    """The short name of a fingerprint: the sha256 (first 12 hex) of its values rounded to `DIGITS` significant
    digits and its exact entries."""
    rounded = [float(f"{v:.{DIGITS - 1}e}") if math.isfinite(v) else str(v) for v in vector]
    return hashlib.sha256(json.dumps([rounded, sorted((exact or {}).items())]).encode()).hexdigest()[:12]


@functools.cache
def _adapter(schema: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(schema)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _errors(data: Any, schema: Any) -> list[dict[str, Any]]:
    """pydantic's errors of `data` against `schema` (strict: values as JSON writes them, nothing coerced), in the
    order of the schema's fields; [] when it is of that type."""
    from pydantic import ValidationError

    try:
        _adapter(schema).validate_python(data, strict=True)
    except ValidationError as e:
        return e.errors(include_url=False)
    return []


def _dotted(err: dict[str, Any]) -> str:
    return ".".join(str(x) for x in err["loc"])


def _said(err: dict[str, Any]) -> str:
    """One pydantic error as "field.path: what is wrong (got value)"."""
    got = "" if err["type"] == "missing" else f" (got {_shown(err['input'])})"
    return f"{_dotted(err) or 'the whole file'}: {err['msg'][0].lower()}{err['msg'][1:]}{got}"


def type_problem(data: Any, schema: Any) -> str | None:
    """The first place where `data` (parsed JSON) is not of type `schema` (a TypedDict of this module, or any type
    pydantic checks), as "field.path: what is wrong (got value)"; None when it is. Strict: values as JSON writes
    them, nothing coerced ("1" is not a number)."""
    errors = _errors(data, schema)
    return _said(errors[0]) if errors else None


def fingerprint_problem(fp: Any, key: str | None = None) -> str | None:
    """What makes `fp` not a fingerprint (in a record, the fingerprint cache or beside a committed leaderboard), or
    None: a field of the wrong type, another key's when filed under `key`, no values, values and labels of different
    lengths, or a digest that does not name its values (they were edited after it was computed)."""
    kind = UnavailableFingerprint if isinstance(fp, dict) and "unavailable" in fp else ProbedFingerprint
    problem = type_problem(fp, kind)
    if problem is None and key is not None and fp.get("key") != key:
        problem = f"key: the fingerprint of {fp.get('key')!r}"
    if problem or kind is UnavailableFingerprint:
        return problem
    if not fp["vector"]:
        return "vector: no values"
    if len(fp["labels"]) != len(fp["vector"]):
        return f"labels: {len(fp['labels'])} labels for {len(fp['vector'])} values"
    if digest(fp["vector"], fp.get("exact")) != fp["digest"]:
        return f"digest: {fp['digest']} does not name its values (they were changed after it was computed)"
    return None


def is_number(v: object) -> bool:
    """A JSON number that is one: not a bool, not nan or infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def short_repr(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


@dataclass(frozen=True)
class RecordProblem:
    """The first thing that makes a parsed file not a valid run record (`record_problem`)."""

    kind: str  # "not a record" | "newer" | "incomplete" (keys of the record itself missing) | "invalid"
    field: str  # the dotted field it is about
    detail: str  # "invalid": what is wrong, from the field's name on; "incomplete": how many more keys are missing
    absent: bool = False  # the field is missing

    def __str__(self) -> str:
        if self.kind == "incomplete":
            return f"not a complete run record: no {self.field}{self.detail}"
        if self.kind == "invalid":
            return f"not a valid run record: {self.detail}"
        return self.detail


#: the values a record's type does not pin down, each checked when it is of its type (why: the leaderboards key and
#: name files by these names, and a percent (85.3) where a fraction belongs would inflate every table silently)
_NAME_WORDS = "a non-empty name of letters, digits, '_', '.', '+' or '-'"
_VALUE_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("run_id", lambda v: v != "", "a non-empty string"),
    ("method", NAME.match, _NAME_WORDS),
    ("dataset", NAME.match, _NAME_WORDS),
    ("protocol", NAME.match, _NAME_WORDS),
    ("budget", lambda v: is_number(v) and v > 0, "a positive number"),
    *((f"metrics.final.{k}", lambda v: is_number(v) and 0.0 <= v <= 1.0, "a fraction in [0, 1]")
      for k in ("accuracy", "mean_class_accuracy", "macro_f1")),
    ("metrics.best_accuracy", lambda v: is_number(v) and 0.0 <= v <= 1.0, "a fraction in [0, 1]"),
    ("config.recipe", lambda v: isinstance(v, str) and NAME.match(v),
     f"a recipe name ('{HARNESS}' or a reference recipe such as adacm)"),
)


_ABSENT = object()


def _value_problem(data: dict[str, Any]) -> RecordProblem | None:
    for dotted, ok, words in _VALUE_CHECKS:
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT and not ok(node):
            return RecordProblem("invalid", dotted, f"{dotted} is {short_repr(node)}; expected {words}")
    return None


def record_problem(data: Any) -> RecordProblem | None:
    """The one check of a run record, whoever reads it (record files, the leaderboards' records): the first thing
    that makes `data` not one, or None. In order: its schema (none, or newer than this code's), the keys it lacks,
    a field not of its type (`Record`), a fingerprint that is not whole (`fingerprint_problem`), a value its type
    allows but a record never holds (a name that is no file name, a budget <= 0, an accuracy outside [0, 1])."""
    version = schema_version(data)
    if version is None:
        return RecordProblem("not a record", "schema", f"not a run record (no 'schema': '{SCHEMA}')")
    if version > SCHEMA_VERSION:
        return RecordProblem("newer", "schema", f"a record of schema {data['schema']}, newer than this code's "
                                                f"{SCHEMA}")
    errors = _errors(data, Record)
    missing = sorted(str(e["loc"][0]) for e in errors if e["type"] == "missing" and len(e["loc"]) == 1)
    if missing:  # keys of the record itself: a truncated or hand-made file
        more = f" (and {len(missing) - 1} more keys)" if len(missing) > 1 else ""
        return RecordProblem("incomplete", missing[0], more, absent=True)
    if errors:
        return RecordProblem("invalid", _dotted(errors[0]), _said(errors[0]), absent=errors[0]["type"] == "missing")
    if "fingerprint" in data and (fp := fingerprint_problem(data["fingerprint"])):
        return RecordProblem("invalid", "fingerprint", f"fingerprint.{fp}")
    return _value_problem(data)


def read_record(data: Any, path: Path | str) -> Record:
    """`data` (a parsed record file) as a `Record` (`record_problem`: one line naming the file and the first thing
    that makes it not one); a newer schema raises `FutureRecord`."""
    problem = record_problem(data)
    if problem is None:
        return data
    raise (FutureRecord if problem.kind == "newer" else FERBenchError)(f"{path}: {problem}")


def read_json_file(path: Path | str, what: str = "a run record") -> Any:
    """The parsed JSON of file `path`; a file that cannot be read, or is not UTF-8 JSON, is one line naming it and
    `what` was expected there."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as e:
        raise FERBenchError(f"{path}: cannot be read ({e.strerror or e}); expected {what}") from e
    except UnicodeDecodeError as e:
        raise FERBenchError(f"{path}: not a text file (byte {e.start} is not UTF-8); expected {what}") from e
    except json.JSONDecodeError as e:
        raise FERBenchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected {what}") from e


def read_record_file(path: Path | str) -> Record:
    """The run record in file `path`, checked (`read_record`)."""
    return read_record(read_json_file(path), path)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write `path` through `write(temporary path)` in the same folder, then rename it into place: a reader (or a
    later run) sees the whole file or none, never a truncated one; on any failure the temporary file is removed
    and the error raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_torch_atomic(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` as `path`, atomically. Serialised in memory first: torch's zip writer reports a failed
    write (a full disk, a file-size limit) as a RuntimeError from its C++ side, the file write does it as OSError."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: str | Path, payload: Any, overwrite: bool = True) -> bool:
    """Write JSON to `path` via a temp file in the same folder and an atomic rename (or link).

    A reader never sees a half-written file, and two writers of the same path leave one whole file.
    With overwrite=False an existing file is kept (the first writer wins, whatever the timing: the
    file appears through a hard link, which fails if the name exists); returns whether this call wrote.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_predictions(record_file: Path, predictions: list[int], targets: Any, test_ids: Any,
                      groups: Any = None) -> dict[str, Any]:
    """Write the final model's per-test-image predictions next to `record_file`, as an int16 `.npy` array (2, N):
    row 0 the test targets, row 1 the predictions, in the test split's order. A dataset whose test images come in
    groups that are not independent (several images of one subject or video) passes an integer group id per image
    in `groups`: it becomes row 2 (the array is then int32, (3, N)), and the leaderboards' intervals resample
    the groups instead of the images. The file is named by the run id
    and the first 12 hex of its sha256, so a duplicate job of the run never replaces the file another job's
    record names (`.npy`, not `.npz`: its bytes depend only on the array). Returns the record's reference to it:
    file name, sha256, N, and the sha256 of the test ids (whether two runs saw the same images in one order)."""
    import io

    import numpy as np

    rows = [targets, predictions] + ([] if groups is None else [groups])
    if groups is not None and len(groups) != len(predictions):
        raise FERBenchError(f"{record_file}: {len(groups)} group ids for {len(predictions)} test predictions")
    buf = io.BytesIO()
    np.save(buf, np.stack([np.asarray(r, dtype=np.int16 if groups is None else np.int32) for r in rows]),
            allow_pickle=False)
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    path = record_file.with_name(f"{record_file.name.removesuffix('.json')}.{sha[:12]}.predictions.npy")
    write_atomic(path, lambda tmp: tmp.write_bytes(blob))
    ids = hashlib.sha256("\n".join(str(i) for i in test_ids).encode()).hexdigest()
    return {"file": path.name, "sha256": sha, "n": len(predictions), "test_ids_sha256": ids}


def read_predictions(record_file: Path, record: dict) -> Any:
    """The (2, N) targets/predictions array a record references ((3, N) with group ids), checked against its
    sha256; None when the record has none (written before predictions were kept)."""
    import numpy as np

    ref = record.get("predictions")
    if not isinstance(ref, dict):
        return None
    path = Path(record_file).with_name(str(ref.get("file")))
    if not path.is_file():
        raise FERBenchError(f"{record_file}: its predictions file {path.name} is missing")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != ref.get("sha256"):
        raise FERBenchError(f"{path}: sha256 does not match the record's; the file was changed after the run")
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or array.shape[0] not in (2, 3) or array.shape[1] != ref.get("n"):
        raise FERBenchError(f"{path}: expected a (2, {ref.get('n')}) array of targets and predictions (or (3, "
                            f"{ref.get('n')}) with group ids), got shape {array.shape}")
    return array


def load_with_predictions(records_dir: str | Path) -> tuple[list[Record], dict[str, Any]]:
    """Every run record under `records_dir` and, by run id, the predictions arrays they reference (checked); prints
    one line for each kind of file it passed over (records of a newer schema, JSON files that are not records)."""
    if not Path(records_dir).is_dir():
        raise FERBenchError(f"{records_dir}: records folder not found")
    scan = scan_records(records_dir)
    for note in scan.notes():
        print(f"ferbench: {note}", file=sys.stderr)
    if not scan.files:
        raise FERBenchError(f"{records_dir}: no run records found")
    predictions = {rec["run_id"]: a for path, rec in scan.files if (a := read_predictions(path, rec)) is not None}
    return [rec for _, rec in scan.files], predictions


def record_path(records_dir: str | Path, run_id: str) -> Path:
    return Path(records_dir) / f"{run_id}.json"


@dataclass
class RecordScan:
    """What a records folder holds: its run records, and the records of a newer schema that were not read."""

    files: list[tuple[Path, Record]] = field(default_factory=list)  # (path, record), sorted by run id
    future: list[Path] = field(default_factory=list)
    not_records: list[Path] = field(default_factory=list)  # JSON files without a record schema

    def notes(self) -> list[str]:
        """One line for each kind of file that was not read."""
        out = []
        if self.future:
            out.append(f"skipped {len(self.future)} record(s) of a newer schema than this FERBench reads ({SCHEMA}), "
                       f"e.g. {self.future[0]}; upgrade FERBench to include them")
        if self.not_records:
            out.append(f"passed over {len(self.not_records)} JSON file(s) that are not run records (no 'schema': "
                       f"'{SCHEMA}'), e.g. {self.not_records[0]}")
        return out


def scan_records(records_dir: str | Path) -> RecordScan:
    """Every run record under `records_dir` (recursively). JSON files that are not run records are passed over; a
    file that is not JSON, or a record that is not valid (`read_record`), is one line naming it."""
    scan = RecordScan()
    for p in sorted(Path(records_dir).rglob("*.json")):
        data = read_json_file(p)
        if schema_version(data) is None:
            scan.not_records.append(p)
            continue
        try:
            scan.files.append((p, read_record(data, p)))
        except FutureRecord:
            scan.future.append(p)
    scan.files.sort(key=lambda pr: pr[1]["run_id"])
    return scan


def load_records(records_dir: str | Path) -> list[Record]:
    """All run records under `records_dir` (recursively), sorted by run id."""
    return [rec for _, rec in scan_records(records_dir).files]


def load_record_files(records_dir: str | Path) -> list[tuple[Path, Record]]:
    """(path, record) of every run record under `records_dir` (recursively), sorted by run id."""
    return scan_records(records_dir).files
