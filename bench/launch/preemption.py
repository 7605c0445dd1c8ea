"""One pre-emption mechanism for plain runs, submitit jobs and packs.

SLURM warns a job with SIGUSR2 `signal_delay_s` before pre-empting it or reaching its time limit. `Preemption`
records the signal instead of acting on it: training stops at its next agreed iteration boundary (every
process of a multi-process run stops at the same step: `Accelerator.set_trigger` / `check_trigger` in the
loop), saves a checkpoint and returns; then `requeue()` hands the signal to submitit's own handler, which
pickles the job, requeues it and exits. A pack forwards the signal to its member processes first.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable
from types import FrameType
from typing import Any


class Preemption:
    """Install on construction; call it (`should_stop`) to ask whether SIGUSR2 has arrived."""

    def __init__(self, signum: int = signal.SIGUSR2) -> None:
        self.signum = signum
        self.received: list[tuple[int, FrameType | None]] = []
        self._previous: Any = signal.getsignal(signum)  # submitit's requeue handler inside a submitit job
        signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append((signum, frame))

    def __call__(self) -> bool:
        return bool(self.received)

    def forward(self, processes: Iterable[subprocess.Popen]) -> None:
        """Pass the signal on to every process still running (a pack's members)."""
        for p in processes:
            if p.poll() is None:
                p.send_signal(self.signum)

    def requeue(self) -> bool:
        """Hand a received signal to the handler it displaced (submitit's requeue, which exits); False when there
        was no signal or no such handler (a plain run: the caller reports the checkpoint and exits)."""
        if self.received and callable(self._previous):
            self._previous(*self.received[0])
            return True
        return False

    def restore(self) -> None:
        signal.signal(self.signum, self._previous)
