"""How every command ends, and how many independent runs share the machine.

`kvmtlb check` and `kvmtlb cost` both run many independent jobs (a scenario x policy x
configuration, or a workload x configuration x policy) in worker processes. This module holds what
they share, below both of them in the layering (it imports nothing of kvmtlb):

- the exit codes of every command (`EXIT_*`; README.md, "Exit codes");
- `run_pool`: jobs on worker processes that stops within about two seconds of Ctrl-C, keeps the
  results that finished (and the partial results of the runs in progress), and reports progress;
- `stop_requested` and `report_progress`, which a job calls to learn that it must stop and to
  say how far it got;
- `rss_mb`: the resident memory of a process, for --max-memory and the progress lines;
- `crash_report`: the traceback of an internal error, written to a file the message names.

Workers ignore SIGINT: Ctrl-C at a terminal reaches the whole process group, and a worker that
raised KeyboardInterrupt at an arbitrary point would lose its result. The parent alone handles
it, and tells the workers through a shared event, which the checker's explorer polls.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

EXIT_OK = 0  # every verdict as expected (check), the same outcome (replay), a report (cost)
EXIT_DIFFERS = 1  # a verdict other than the expected one (check), a different outcome (replay)
EXIT_INPUT = 2  # an input error: a file, an option, a user policy that raises or breaks the API
EXIT_STOPPED = 3  # stopped by Ctrl-C or a limit (--max-states, --timeout, --max-memory)
EXIT_INTERNAL = 4  # a bug in kvmtlb: a short message, the traceback in a file it names

GRACE_SECONDS = 1.5  # after Ctrl-C, how long runs in progress get to return partial results
POLL_SECONDS = 0.25  # how often the parent looks at the pool (and so at a Ctrl-C)

J = TypeVar("J")
R = TypeVar("R")


# -- in a job: stop requests and progress ---------------------------------------------------------
class _Channel:
    """This process's view of the pool: set in each worker by `_init_worker`; in the parent
    (jobs run in-process) `stop` is a local flag set when Ctrl-C interrupts a job."""

    stop: Any = None  # multiprocessing.Event in a worker
    queue: Any = None  # multiprocessing.Queue in a worker
    index: int = -1  # the job this worker runs
    local_stop: bool = False


def stop_requested() -> bool:
    """Whether the user asked every run to stop (Ctrl-C)."""
    if _Channel.stop is not None:
        return bool(_Channel.stop.is_set())
    return _Channel.local_stop


def request_stop() -> None:
    """In-process: a job that caught KeyboardInterrupt tells the loop running jobs to stop."""
    _Channel.local_stop = True


def report_progress(info: dict[str, Any]) -> None:
    """A running job's progress (states, transitions, depth, seconds, rss_mb, ...), for the
    parent's progress display. A no-op outside a worker."""
    if _Channel.queue is not None:
        with contextlib.suppress(Exception):  # a full or closed queue loses a progress line
            _Channel.queue.put_nowait((_Channel.index, info))


def _init_worker(stop: Any, queue: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _Channel.stop = stop
    _Channel.queue = queue


def _call(fn: Callable[[J], R], index: int, job: J) -> R | None:
    if _Channel.stop is not None and _Channel.stop.is_set():
        return None  # queued before Ctrl-C: not started
    _Channel.index = index
    return fn(job)


# -- in the parent: the pool ---------------------------------------------------------------------
@dataclass
class Tick:
    """What the progress display gets about twice a second: how many jobs finished, and the last
    progress report of each job in progress (by job index)."""

    done: int
    total: int
    seconds: float
    running: dict[int, dict[str, Any]] = field(default_factory=dict)
    workers_rss_mb: float = 0.0


@dataclass
class Outcome(Generic[R]):
    """`results[i]` is job i's result, or None if it never ran (stopped before it started)."""

    results: list[R | None]
    interrupted: bool


def run_pool(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    workers: int,
    *,
    failed: Callable[[int, BaseException], R],
    done: Callable[[int, R], None] | None = None,
    tick: Callable[[Tick], None] | None = None,
    halts: Callable[[R], bool] = lambda _r: False,
) -> Outcome[R]:
    """Run `fn` on every job, on `workers` processes (in this process for one worker or one job).

    `fn` must catch its own exceptions; `failed(i, exc)` turns a job whose worker died into a
    result. `done(i, r)` is called as each job finishes; `tick` about twice a second while jobs run
    in worker processes. In this process, a job whose result `halts` (it was interrupted) stops the
    loop. On Ctrl-C the jobs not started are dropped, the ones in progress get GRACE_SECONDS to
    return what they have (they poll `stop_requested`), and the workers are then terminated.
    """
    _Channel.local_stop = False
    results: list[R | None] = [None] * len(jobs)
    if workers <= 1 or len(jobs) <= 1:
        interrupted = False
        for i, job in enumerate(jobs):
            if stop_requested():
                interrupted = True
                break
            try:
                r = fn(job)
            except KeyboardInterrupt:
                interrupted = True
                break
            results[i] = r
            if done is not None:
                done(i, r)
            if halts(r):
                interrupted = True
                break
        return Outcome(results, interrupted or stop_requested())
    ctx = multiprocessing.get_context()
    stop = ctx.Event()
    queue = ctx.Queue()
    # Ctrl-C only counts while the pool runs, in a flag the loop below reads: a KeyboardInterrupt
    # raised at an arbitrary point could land inside concurrent.futures.wait while it holds some
    # futures' locks (it takes them one by one), and the executor's manager thread, blocked on one
    # of them for good, would keep the interpreter from exiting (seen about once in 50 runs).
    sigints = 0

    def on_sigint(_signum: int, _frame: Any) -> None:
        nonlocal sigints
        sigints += 1
        stop.set()

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # forked workers inherit SIG_IGN
    try:
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(stop, queue)
        )
        futures: dict[Future[R | None], int] = {
            pool.submit(_call, fn, i, job): i for i, job in enumerate(jobs)
        }
        signal.signal(signal.SIGINT, on_sigint)
        return _supervise(pool, futures, results, queue, lambda: sigints, failed, done, tick)
    finally:
        signal.signal(signal.SIGINT, old)


def _supervise(
    pool: ProcessPoolExecutor,
    futures: dict[Future[R | None], int],
    results: list[R | None],
    queue: Any,
    sigints: Callable[[], int],
    failed: Callable[[int, BaseException], R],
    done: Callable[[int, R], None] | None,
    tick: Callable[[Tick], None] | None,
) -> Outcome[R]:
    """`run_pool`'s loop in the parent: collect results and progress until every job finished or
    the user pressed Ctrl-C (`sigints()` > 0); then give the runs in progress their grace and
    terminate the workers."""
    t0 = time.monotonic()
    running: dict[int, dict[str, Any]] = {}
    pending = set(futures)
    finished = 0

    def collect(fs: set[Future[R | None]]) -> None:
        nonlocal finished
        for f in fs:
            i = futures[f]
            running.pop(i, None)
            if f.cancelled():
                continue
            try:
                r = f.result()
            except BaseException as e:  # the worker died (killed, out of memory)
                r = failed(i, e)
            if r is None:
                continue
            results[i] = r
            finished += 1
            if done is not None:
                done(i, r)

    def drain() -> None:
        while True:
            try:
                i, info = queue.get_nowait()
            except Exception:
                return
            if results[i] is None:
                running[i] = info

    while pending and not sigints():
        ready, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
        drain()
        collect(ready)
        if tick is not None:
            rss = sum(rss_mb(p.pid) for p in _processes(pool) if p.pid is not None)
            tick(Tick(finished, len(results), time.monotonic() - t0, dict(running), rss))
    if not sigints():
        pool.shutdown(wait=True)
        return Outcome(results, False)
    for f in pending:
        f.cancel()
    deadline = time.monotonic() + GRACE_SECONDS
    while pending and time.monotonic() < deadline and sigints() < 2:  # a second Ctrl-C: no grace
        ready, pending = wait(
            pending,
            timeout=min(POLL_SECONDS, max(0.0, deadline - time.monotonic())),
            return_when=FIRST_COMPLETED,
        )
        collect(ready)
    for p in _processes(pool):
        if p.is_alive():
            p.terminate()
    # Let the executor's manager thread finish its clean-up now (shutdown drops the pool's
    # reference to it): if it closes its wake-up pipe while the interpreter's exit handler
    # writes to it (CPython 3.11 takes no lock there), the user sees an OSError traceback.
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        manager.join(timeout=GRACE_SECONDS)
    return Outcome(results, True)


def _processes(pool: ProcessPoolExecutor) -> list[Any]:
    # The executor's worker processes: not public API, but the only way to terminate workers
    # that are in the middle of a job (shutdown() waits for them).
    procs = getattr(pool, "_processes", None) or {}
    return list(procs.values())


# -- memory and crashes ---------------------------------------------------------------------------
def rss_mb(pid: int | None = None) -> float:
    """Resident memory of process `pid` (default: this one) in MiB; 0.0 if it cannot be read.
    Linux: /proc/PID/statm; elsewhere, for this process only, the peak from getrusage."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        pass
    if pid is not None and pid != os.getpid():
        return 0.0
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
    except (ImportError, OSError):
        return 0.0


def crash_report(e: BaseException, context: str = "") -> str:
    """Write the traceback of `e` to a new file in the temporary directory; returns its path."""
    fd, path = tempfile.mkstemp(prefix="kvmtlb-crash-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"kvmtlb internal error{': ' + context if context else ''}\n")
        f.write(f"python {sys.version.split()[0]}, pid {os.getpid()}\n\n")
        f.write("".join(traceback.format_exception(e)))
    return path


def internal_error_message(e: BaseException, path: str) -> str:
    """The one line a user sees for an internal error."""
    text = "".join(traceback.format_exception_only(e)).strip().splitlines()[-1]
    return (
        f"internal error: {text}; this is a bug in kvmtlb, not in your input. The traceback is "
        f"in {path}; please report it with that file"
    )
