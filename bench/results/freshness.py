"""Whether records still describe the code: each record's fingerprint against the current code's for its method,
protocol and arguments (bench/engine/fingerprint.py).

    current   the code installed now behaves as the code that trained it (within the probe's tolerance)
    stale     it does not: the run would give other numbers today (re-run with `ferbench sweep --rerun-stale`)
    unknown   the record has no fingerprint (written before FERBench recorded one), its probe could not run
              (`fingerprint: {unavailable: why}`), its method cannot be probed now, or it was not probed (`--no-probe`
              and no fingerprint cached for the code installed now)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

STATES = ("current", "stale", "unknown")


@dataclass(frozen=True)
class Freshness:
    state: str  # one of STATES
    key: str | None = None  # method@recipe[args]
    recorded: str | None = None  # the record's fingerprint digest
    current: str | None = None  # the current code's
    commit: str | None = None  # the record's git commit
    changed: tuple[str, ...] = field(default_factory=tuple)  # what moved in the probe (stale), or why unknown

    @property
    def word(self) -> str:
        return self.state


def assess(records: Iterable[Mapping[str, Any]], probe: bool = True,
           announce: Callable[[str], None] | None = None) -> dict[str, Freshness]:
    """run id -> the freshness of each record against the current code's fingerprints: those cached for this code
    state, the others probed once (all in one process) unless `probe` is false; `announce` is told before a probe."""
    from bench.engine.fingerprint import changed_values, config_of_record, current_fingerprints, fingerprint_key
    from bench.errors import FERBenchError

    records = list(records)
    keyed: dict[str, tuple[Mapping, Any]] = {}
    out: dict[str, Freshness] = {}
    for rec in records:
        fp, rid, commit = rec.get("fingerprint"), rec["run_id"], rec.get("git_commit")
        if isinstance(fp, Mapping) and "unavailable" in fp:
            out[rid] = Freshness("unknown", fp.get("key"), commit=commit,
                                 changed=(f"its probe could not run: {fp['unavailable']}",))
            continue
        if not isinstance(fp, Mapping) or "vector" not in fp:
            out[rid] = Freshness("unknown", commit=commit, changed=("no fingerprint in the record",))
            continue
        try:
            cfg = config_of_record(dict(rec))
            keyed[rid] = (rec, cfg, fingerprint_key(cfg))
        except FERBenchError as e:  # a method no longer registered, a config this code cannot read
            out[rid] = Freshness("unknown", fp.get("key"), fp.get("digest"), commit=commit, changed=(str(e),))
    if not keyed:
        return out
    current = current_fingerprints([cfg for _, cfg, _ in keyed.values()], compute=probe, announce=announce)
    for rid, (rec, _, key) in keyed.items():
        fp, now = rec["fingerprint"], current.get(key)
        commit = rec.get("git_commit")
        if now is None:
            out[rid] = Freshness("unknown", key, fp.get("digest"), None, commit,
                                 ("not probed (--no-probe) and no fingerprint cached for the code installed now",))
            continue
        if "unavailable" in now:
            out[rid] = Freshness("unknown", key, fp.get("digest"), None, commit,
                                 (f"the current code's probe could not run: {now['unavailable']}",))
            continue
        from bench.engine.fingerprint import same_behaviour

        if same_behaviour(fp, now):
            out[rid] = Freshness("current", key, fp.get("digest"), now["digest"], commit)
        else:
            why = changed_values(fp, now) if fp.get("key") == key else [f"its key is now {key}"]
            out[rid] = Freshness("stale", key, fp.get("digest"), now["digest"], commit, tuple(why))
    return out


def cell_mark(run_ids: Iterable[str], freshness: Mapping[str, Freshness]) -> str:
    """What a table cell of these runs says of them: "stale" when any is, "mixed" when its runs were trained by
    code of different behaviour (never averaged without saying so), "" otherwise."""
    states = [freshness[r] for r in run_ids if r in freshness]
    marks = []
    if any(f.state == "stale" for f in states):
        marks.append("stale")
    digests: dict[str | None, set[str]] = {}
    for f in states:
        if f.recorded:
            digests.setdefault(f.key, set()).add(f.recorded)
    if any(len(d) > 1 for d in digests.values()):  # one method and protocol, trained by code of two behaviours
        marks.append("mixed")
    return " ".join(marks)


def legend(freshness: Mapping[str, Freshness], run_ids: Iterable[str]) -> list[str]:
    """One line per stale fingerprint key among `run_ids`: what changed and since which commit."""
    lines = {}
    for rid in run_ids:
        f = freshness.get(rid)
        if f is not None and f.state == "stale":
            commits = lines.setdefault(f.key, (f, set()))[1]
            commits.add(f.commit[:12] if f.commit else "unknown")
    return [f"`{key}`: its records (commit {', '.join(sorted(commits))}, fingerprint `{f.recorded}`) differ from "
            f"the current code (`{f.current}`): {'; '.join(f.changed) or 'the probe moved'}"
            for key, (f, commits) in sorted(lines.items())]
