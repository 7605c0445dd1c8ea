"""Reader for the RAF-DB "basic" layout (reference/harness.md §2.1).

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
from bench.data.records import SampleRecord
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


def _parse_line(label_file: Path, lineno: int, line: str) -> tuple[str, str, int]:
    """(name, split, native label) of one non-empty label line, or a FERBenchError naming the line."""
    where = f"{label_file}:{lineno}"
    fields = line.split()
    if len(fields) not in (2, 3):
        raise FERBenchError(f"{where}: expected '<name>.jpg <label>' or '<name>.jpg <train|test> <label>' "
                            f"(2 or 3 fields), got {len(fields)} fields: {line.strip()!r}")
    name, raw_label = fields[0], fields[-1]
    split = _split_of(name)
    if split is None:
        raise FERBenchError(f"{where}: expected an image name starting with 'train' or 'test', got {name!r}")
    if "." not in name:
        raise FERBenchError(f"{where}: expected an image file name like 'train_00001.jpg', got {name!r}")
    if len(fields) == 3 and fields[1] != split:
        raise FERBenchError(f"{where}: split field {fields[1]!r} disagrees with the name prefix of {name!r}; "
                            f"expected {split!r}")
    try:
        label = int(raw_label)
    except ValueError:
        label = None
    if label not in RAFDB_NATIVE_NAMES:
        raise FERBenchError(f"{where}: expected a label that is an integer in 1..7, got {raw_label!r}")
    return name, split, label


def read_rafdb(root: str | Path, images: str = "aligned") -> list[SampleRecord]:
    """All records of a RAF-DB basic folder, in label-file order.

    `root` is the `basic/` folder or its parent. `images` picks `Image/aligned/<stem>_aligned.jpg`
    (100x100 crops) or `Image/original/<name>`. Individual missing images are returned anyway
    (see `find_missing`): the prepare stage counts unreadable images under its own policy.
    """
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
        name, split, native = _parse_line(label_file, lineno, line)
        if name in first_line:
            raise FERBenchError(f"{label_file}:{lineno}: duplicate image name {name!r} (first on line "
                                f"{first_line[name]}); expected each image once")
        first_line[name] = lineno
        stem = name.rsplit(".", 1)[0]
        file_name = f"{stem}_aligned.jpg" if images == "aligned" else name
        records.append(SampleRecord(id=stem, path=str(image_dir / file_name), label=RAFDB_TO_CANONICAL[native],
                                    native_label=native, split=split))
    return records


def find_missing(records: list[SampleRecord]) -> list[SampleRecord]:
    """The records whose image file does not exist."""
    return [r for r in records if not os.path.isfile(r.path)]
