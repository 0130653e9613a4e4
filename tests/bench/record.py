"""What `make bench` records, and how a goal is judged from it.

A *row* is one measure (boot to `login:`, `run("true")`, ...) with the raw samples of each of its
*variants* (bare QEMU, sercon, labgrid, ...), gathered interleaved in one run on one machine. A
*goal* compares two variants of a row, or bounds one, and is judged from a bootstrap 95%
confidence interval: **met** when the whole interval meets it, **missed** when none of it does,
**undecided** when the interval straddles the limit (more runs would tell). Variants taken in
interleaved rounds are compared round by round: the statistic of each round's pair, resampled by
round, so a slow minute of a shared machine falls on both sides of a ratio instead of widening it. Every figure the
README shows is read from the one result file this writes (`tests/bench/results/bench.json`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import random
import socket
import statistics
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "bench" / "results"
RESULT_FILE = RESULTS / "bench.json"
BOOTSTRAP = 2000
#: Fewer rounds than this are not paired: a bootstrap over a handful of pairs claims a precision
#: that a handful of samples cannot have.
MIN_ROUNDS = 10


def boot_to_login_ms(start: Callable[[], Any], timeout: float = 300) -> float:
    """Milliseconds from calling `start` (which returns a started Machine) to `login: ` on its
    console; the guest is stopped afterwards. One sample of every boot-to-login row."""
    import time

    from harness.console import Console

    started = time.perf_counter()
    machine = start()
    try:
        console = Console.for_machine(machine)
        console.expect("login: ", timeout=timeout)
        elapsed = time.perf_counter() - started
        console.close()
        return elapsed * 1000
    finally:
        machine.stop()


def run_true_ms(shell: Any, times: int) -> list[float]:
    """`times` samples of `shell.run("true")` (a harness LinuxShell), in milliseconds each: the
    run("true") rows of bench.py and bench_hosts.py."""
    import time

    out = []
    for _ in range(times):
        started = time.perf_counter()
        shell.run("true")
        out.append((time.perf_counter() - started) * 1000)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "p10": percentile(values, 10), "p50": percentile(values, 50),
            "p90": percentile(values, 90), "mean": statistics.fmean(values)}


def _pick(stat: str) -> Callable[[Sequence[float]], float]:
    return statistics.median if stat == "p50" else statistics.fmean


def by_round(values: Sequence[float], rounds: int) -> list[Sequence[float]] | None:
    """`values` cut into the `rounds` equal blocks they were taken in, or None if they do not cut
    evenly or are too few rounds to pair (MIN_ROUNDS)."""
    if rounds < MIN_ROUNDS or not values or len(values) % rounds:
        return None
    size = len(values) // rounds
    return [values[i * size:(i + 1) * size] for i in range(rounds)]


class Estimate(NamedTuple):
    """A figure with its bootstrap 95% CI, and the rounds it was paired over (0: not paired)."""

    value: float
    low: float
    high: float
    paired_rounds: int = 0


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], *, stat: str = "p50",
             rounds: int = 0, seed: int = 1) -> Estimate:
    """The ratio of `stat` (p50 or mean) of two samples, with a bootstrap 95% CI
    (paired by round when both were taken in `rounds` interleaved rounds, see excess_sum_ci)."""
    return excess_sum_ci([numerator], denominator, stat=stat, rounds=rounds, seed=seed)


def excess_sum_ci(parts: Sequence[Sequence[float]], baseline: Sequence[float], *, stat: str = "p50",
                  rounds: int = 0, seed: int = 1) -> Estimate:
    """1 + the sum of each part's excess over `baseline` (stat(part)/stat(baseline) - 1),
    with a bootstrap 95% CI: what a path that pays every part's extra cost in turn cannot beat. With
    one part it is that part's ratio to the baseline.

    With `rounds`, when every sample cuts into that many blocks, the figure is worked out for each
    round from its own blocks, and the point and CI are `stat` of those per-round figures, resampled
    by round (a paired bootstrap). Otherwise the samples are resampled apart."""
    pick = _pick(stat)

    def bound(draws: Sequence[Sequence[float]], base: Sequence[float]) -> float:
        b = pick(base)
        if len(draws) == 1:
            return pick(draws[0]) / b
        return 1 + sum(pick(d) / b - 1 for d in draws)

    rng = random.Random(seed)
    cut = [by_round(p, rounds) for p in (*parts, baseline)]
    blocks = [c for c in cut if c is not None]
    if len(blocks) == len(cut):
        per_round = [bound([b[i] for b in blocks[:-1]], blocks[-1][i]) for i in range(rounds)]
        values = sorted(pick(rng.choices(per_round, k=rounds)) for _ in range(BOOTSTRAP))
        return Estimate(pick(per_round), percentile(values, 2.5), percentile(values, 97.5), rounds)
    point = bound(parts, baseline)
    values = sorted(bound([rng.choices(p, k=len(p)) for p in parts], rng.choices(baseline, k=len(baseline)))
                    for _ in range(BOOTSTRAP))
    return Estimate(point, percentile(values, 2.5), percentile(values, 97.5))


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """These environment variables set for the block (an owner started in it reads them), then as before."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def abba(index: int, items: Sequence[Any]) -> list[Any]:
    """Round `index` of an interleaved run: the items in order, reversed every other round (ABBA...),
    so drift in machine load falls on all of them alike."""
    return list(items) if index % 2 == 0 else list(items)[::-1]


def interleaved(rounds: int, variants: dict[str, Callable[[], float | list[float]]]) -> dict[str, list[float]]:
    """Run each variant once per round, in abba() order. Each callable returns one sample or a block
    (the same size every round, so the row can pass `rounds` and be judged by round)."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(rounds):
        for name in abba(index, list(variants)):
            got = variants[name]()
            samples[name].extend(got if isinstance(got, list) else [got])
    return samples


@dataclass
class Row:
    """One measure: samples per variant (in `unit`), and why a variant is what it is."""

    id: str
    label: str
    unit: str
    samples: dict[str, list[float]]
    notes: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None
    #: The samples were taken in this many interleaved rounds, each variant's in equal blocks in
    #: round order: goals on this row are judged round by round. 0: no rounds to pair.
    rounds: int = 0

    def stats(self) -> dict[str, dict[str, float]]:
        return {name: summary(values) for name, values in self.samples.items() if values}


@dataclass(frozen=True)
class Goal:
    """`row`'s `variant` against `baseline` (a ratio of p50, or of means) or alone, within `limit`.

    kind "ratio_max": variant/baseline <= limit; "ratio_min": variant/baseline >= limit (higher is
    better, e.g. throughput); "value_max": variant's p50 <= limit, in the row's unit;
    "all_exact": every sample of a pass/fail check is 1 (no interval: one failure is a miss).
    """

    id: str
    text: str
    row: str
    variant: str
    kind: Literal["ratio_max", "ratio_min", "value_max", "all_exact"]
    limit: float
    baseline: str | None = None
    stat: str = "p50"
    #: Variants of the same row that no implementation can beat, each reported beside the verdict.
    #: With two or more, each a cost that every implementation pays in turn (a protocol, a process
    #: hop), their excesses over the baseline add up to a bound no implementation can beat either.
    floors: tuple[str, ...] = ()
    #: The variant that does the least an implementation of sercon's design must do (for a front
    #: end: its own Python process between the client and the owner's console socket). If even it
    #: misses the limit, the design cannot meet it on this host, whatever the code does.
    design_floor: str | None = None


#: Every goal sercon holds itself to in `make bench`, in the order the report shows them.
GOALS: tuple[Goal, ...] = (
    Goal("boot-overhead", "boot to login: through sercon at most 3% slower than bare QEMU (linux-initramfs)",
         "boot.linux-initramfs", "sercon", "ratio_max", 1.03, "bare QEMU", stat="mean"),
    Goal("rtt-floor", 'run("true") at most 1.2x a raw write/read loop on the same guest and socket',
         "rtt", "sercon run()", "ratio_max", 1.2, "raw loop, same socket"),
    Goal("rtt-labgrid", 'run("true") at least 2x faster than labgrid\'s QEMUDriver + ShellDriver',
         "rtt", "labgrid QEMUDriver", "ratio_min", 2.0, "sercon run()"),
    Goal("throughput", "guest output to the websocket at least 0.9x the raw QEMU socket",
         "web.throughput", "websocket", "ratio_min", 0.9, "raw QEMU socket"),
    Goal("echo-web", "keystroke echo over the web at most 1.2x raw", "web.echo", "websocket", "ratio_max", 1.2,
         "raw QEMU socket", floors=("QEMU's own TLS websocket", "owner socket"),
         design_floor="Python websocket proxy on the owner socket"),
    Goal("echo-ssh", "keystroke echo over SSH at most 1.2x raw", "web.echo", "ssh", "ratio_max", 1.2,
         "raw QEMU socket", floors=("QEMU behind OpenSSH's sshd", "owner socket"),
         design_floor="Python SSH proxy on the owner socket"),
    Goal("viewers", "writer speed with 20 read-only viewers at least 0.95x alone", "web.viewers",
         "alone", "ratio_min", 0.95, "with 20 viewers"),
    Goal("viewers-bytes", "every viewer received exactly the bytes of the serial log", "web.viewers.bytes",
         "viewers", "all_exact", 1.0),
    Goal("restore", "snapshot restore into a running guest, to a shell answer, within 100 ms (linux-initramfs)",
         "snapshot.linux-initramfs", "restore into a running guest", "value_max", 100.0),
    Goal("restore-new", "a new guest from a snapshot, to a shell answer, within 100 ms (linux-initramfs)",
         "snapshot.linux-initramfs", "restore", "value_max", 100.0),
    Goal("memory-shared", "guests restored from one snapshot use at most half the memory of booted ones",
         "memory", "restored", "ratio_max", 0.5, "booted"),
)


def judge(goal: Goal, rows: dict[str, Row]) -> dict[str, Any]:
    """The verdict on one goal: value, 95% CI, and met / missed / undecided / not measured."""
    out: dict[str, Any] = {"id": goal.id, "text": goal.text, "limit": goal.limit, "kind": goal.kind}
    row = rows.get(goal.row)
    have = row is not None and row.skipped is None and row.samples.get(goal.variant) and (
        goal.baseline is None or row.samples.get(goal.baseline))
    if not have or row is None:
        out.update(verdict="not measured", reason=(row.skipped if row is not None else None) or "no samples")
        return out
    if goal.kind == "all_exact":
        values = row.samples[goal.variant]
        exact = sum(1 for v in values if v == 1.0)
        out.update(value=exact / len(values), ci95=[exact / len(values)] * 2,
                   verdict="met" if exact == len(values) else "missed", detail=f"{exact} of {len(values)}")
        return out
    if goal.kind == "value_max":
        values = row.samples[goal.variant]
        point, low, high, _ = ratio_ci(values, [1.0] * len(values), stat=goal.stat)
    else:
        assert goal.baseline is not None
        point, low, high, paired = ratio_ci(row.samples[goal.variant], row.samples[goal.baseline],
                                            stat=goal.stat, rounds=row.rounds)
        if paired:
            out["paired_rounds"] = paired
    def good(x: float) -> bool:
        return x <= goal.limit if goal.kind in ("ratio_max", "value_max") else x >= goal.limit

    verdict = "met" if good(low) and good(high) else "missed" if not good(low) and not good(high) else "undecided"
    out.update(value=point, ci95=[low, high], verdict=verdict)
    def against_baseline(name: str) -> dict[str, Any]:
        assert goal.baseline is not None
        value, low, high, _ = ratio_ci(row.samples[name], row.samples[goal.baseline], stat=goal.stat,
                                       rounds=row.rounds)
        return {"variant": name, "value": value, "ci95": [low, high]}

    floors = [name for name in goal.floors if row.samples.get(name)]
    if floors and goal.baseline:
        out["floors"] = [against_baseline(name) for name in floors]
        if len(floors) >= 2:
            value, low, high, _ = excess_sum_ci([row.samples[name] for name in floors], row.samples[goal.baseline],
                                                stat=goal.stat, rounds=row.rounds)
            out["bound"] = {"variants": floors, "value": value, "ci95": [low, high],
                            "reachable": good(low) or good(high)}
    if goal.design_floor and goal.baseline and row.samples.get(goal.design_floor):
        least = against_baseline(goal.design_floor)
        out["design_floor"] = {**least, "reachable": good(least["ci95"][0]) or good(least["ci95"][1])}
    return out


def machine_meta() -> dict[str, Any]:
    """Date, commit, host, cores and QEMU version: what a reader needs to re-measure."""
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    from emulator.qemu_args import find_qemu

    dirty = bool(run("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": run("git", "rev-parse", "--short=12", "HEAD") + ("+dirty" if dirty else ""),
        "host": socket.gethostname(), "cores": os.cpu_count(), "machine": platform.machine(),
        "kernel": platform.release(), "python": platform.python_version(),
        "qemu": run(find_qemu(), "--version").splitlines()[0] if find_qemu() else "",
    }


def save(meta: dict[str, Any], rows: list[Row], path: Path = RESULT_FILE) -> dict[str, Any]:
    by_id = {row.id: row for row in rows}
    result = {
        "meta": meta,
        "rows": [{**asdict(row), "stats": row.stats()} for row in rows],
        "goals": [judge(goal, by_id) for goal in GOALS],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def load(path: Path = RESULT_FILE) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result
