"""`ferbench status`: done / stale / running / requeued / pending / failed per run of a sweep's output folder."""

from __future__ import annotations

import argparse

from bench.commands.options import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    st = subparsers.add_parser("status", help="done / stale / running / requeued / pending / failed per run of a "
                                                "sweep's output folder")
    st.add_argument("output_dir")
    st.add_argument("--no-probe", action="store_true",
                    help="answer from the fingerprints cached for the code installed now; records whose key has none "
                         "read unknown instead of done or stale (the probe runs once per code state otherwise)")
    st.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from bench.launch.status import print_status

    print_status(args.output_dir, probe=not args.no_probe)
    return 0
