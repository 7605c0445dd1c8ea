"""Reader for the RAF-DB "basic" layout (docs/guides/datasets.md#raf-db).

    basic/EmoLabel/list_patition_label.txt     (sic; some mirrors spell it "partition")
    basic/Image/aligned/<stem>_aligned.jpg
    basic/Image/original/<stem>.jpg

Each label line is `<name>.jpg <label>` or, in one unverified variant, `<name>.jpg <train|test> <label>`.
The split always comes from the name prefix; a split column, when present, must agree with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.data.labels import RAFDB_NATIVE_NAMES, RAFDB_TO_CANONICAL
from bench.data.records import ReadReport, SampleRecord
from bench.errors import FERBenchError

# Official misspelling first: it is what the real download contains.
LABEL_FILE_NAMES: tuple[str, ...] = ("list_patition_label.txt", "list_partition_label.txt")
IMAGE_KINDS: tuple[str, ...] = ("aligned", "original")
SPLITS: tuple[str, ...] = ("train", "test")


def find_basic_dir(root: str | Path) -> Path:
    """The `basic/` folder: `root` itself when it holds `EmoLabel/`, else `root/basic`."""
    root = Path(root)
    if not root.is_dir():
        raise FERBenchError(f"RAF-DB root {root} does not exist or is not a folder; expected the 'basic' folder "
                            "or its parent")
    if (root / "EmoLabel").is_dir() or not (root / "basic").is_dir():
        return root
    return root / "basic"


def find_label_file(basic: Path) -> Path:
    """The label file under `basic/EmoLabel`, accepting both spellings."""
    for name in LABEL_FILE_NAMES:
        path = basic / "EmoLabel" / name
        if path.is_file():
            return path
    looked = " or ".join(str(basic / "EmoLabel" / n) for n in LABEL_FILE_NAMES)
    raise FERBenchError(f"RAF-DB label file not found: looked for {looked}")


def _split_of(name: str) -> str | None:
    for split in SPLITS:
        if name.startswith(split):
            return split
    return None


class LineError(ValueError):
    """A bad entry in a label file: `kind` is "malformed" or "mislabelled"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _parse_line(line: str) -> tuple[str, str, int]:
    """(name, split, native label) of one non-empty label line, or a LineError saying what is wrong."""
    fields = line.split()
    if len(fields) not in (2, 3):
        raise LineError("malformed", "expected '<name>.jpg <label>' or '<name>.jpg <train|test> <label>' "
                        f"(2 or 3 fields), got {len(fields)} fields: {line.strip()!r}")
    name, raw_label = fields[0], fields[-1]
    split = _split_of(name)
    if split is None:
        raise LineError("malformed", f"expected an image name starting with 'train' or 'test', got {name!r}")
    if "." not in name:
        raise LineError("malformed", f"expected an image file name like 'train_00001.jpg', got {name!r}")
    if len(fields) == 3 and fields[1] != split:
        raise LineError("malformed", f"split field {fields[1]!r} disagrees with the name prefix of {name!r}; "
                        f"expected {split!r}")
    try:
        label = int(raw_label)
    except ValueError:
        label = None
    if label not in RAFDB_NATIVE_NAMES:
        raise LineError("mislabelled", f"expected a label that is an integer in 1..7, got {raw_label!r}")
    return name, split, label


def read_rafdb(root: str | Path, images: str = "aligned", report: ReadReport | None = None) -> list[SampleRecord]:
    """All records of a RAF-DB basic folder, in label-file order.

    `root` is the `basic/` folder or its parent. `images` picks `Image/aligned/<stem>_aligned.jpg`
    (100x100 crops) or `Image/original/<name>`. Individual missing images are returned anyway
    (see `find_missing`): the prepare stage counts unreadable images under its own policy. A bad
    label line raises, or is recorded in `report` and skipped when the report is not strict.
    """
    report = report if report is not None else ReadReport()
    if images not in IMAGE_KINDS:
        raise FERBenchError(f"RAF-DB images={images!r}: expected one of {', '.join(IMAGE_KINDS)}")
    basic = find_basic_dir(root)
    label_file = find_label_file(basic)
    image_dir = (basic / "Image" / images).absolute()
    if not image_dir.is_dir():
        raise FERBenchError(f"RAF-DB image folder {image_dir} not found (listed by {label_file}); expected "
                            f"basic/Image/{images}/")
    try:
        text = label_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FERBenchError(f"{label_file}: cannot read as UTF-8 text: {exc}") from exc

    records: list[SampleRecord] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            name, split, native = _parse_line(line)
        except LineError as e:
            report.problem(e.kind, f"{label_file}:{lineno}", str(e))
            continue
        if name in first_line:
            report.problem("malformed", f"{label_file}:{lineno}", f"duplicate image name {name!r} (first on "
                           f"line {first_line[name]}); expected each image once")
            continue
        first_line[name] = lineno
        stem = name.rsplit(".", 1)[0]
        file_name = f"{stem}_aligned.jpg" if images == "aligned" else name
        records.append(SampleRecord(id=stem, path=str(image_dir / file_name), label=RAFDB_TO_CANONICAL[native],
                                    native_label=native, split=split))
    return records


def find_missing(records: list[SampleRecord]) -> list[SampleRecord]:
    """The records whose image file does not exist."""
    return [r for r in records if not os.path.isfile(r.path)]
