"""`ferbench` command line: data, run, sweep, leaderboard, demo, methods.

Bad input ends with one line `ferbench: error: ...` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.commands import (
    benchmark,
    check_method,
    data,
    demo,
    leaderboard,
    methods,
    plan_seeds,
    recipes,
    run,
    status,
    sweep,
)
from bench.errors import FERBenchError
from bench.startup import configure

#: the commands, in the order `ferbench --help` lists them; each module's `add_parser` adds its own (bench/commands)
COMMANDS = (recipes, methods, check_method, data, benchmark, run, sweep, status, leaderboard, plan_seeds, demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _dispatch(argv: list[str] | None) -> int:
    # threads and OpenMP wait policy, before any command loads torch; a setting that cannot be read stops here
    configure()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # numbers are checked as they are parsed (`_number`)
    if extra:  # dotted overrides may follow the flags (`sweep SPEC --dry-run data.root=X`)
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args.fn(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched at run time
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        return _dispatch(argv)
    except FERBenchError as e:
        print(f"ferbench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a file-size limit, a folder that cannot be written: one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"ferbench: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ferbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
