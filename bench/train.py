"""Entry point for launchers: `accelerate launch [--multi_gpu --num_processes N] -m bench.train KEY=VALUE ...`.

Takes the same arguments as `ferbench run`; each process builds its own Accelerator from the
launcher's environment, and only the main process writes the record. `main` sets the threads and OpenMP wait
policy first (`bench.startup`), before torch is imported.
"""

from __future__ import annotations

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
