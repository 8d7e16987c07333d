"""Carries recorder messages to a `RunSink` off the training thread: in a child process, or in a thread.

Messages come in order through a short queue. A message may also be a function that builds it (the
recorder's compiled probe pass on the weights of one moment): the worker's thread calls such functions in
turn, in the order they came. While training runs, that work is paced: together with the analysis it feeds,
it may take at most a given share of the wall time beside training (`Pacer`), unless training leaves the CPU
idle (waiting on data, a GPU or a sleep). Work beyond the budget waits, holding only the weights it was given,
and runs once training ends, after `fit` has returned; the process waits for it at exit. The recording
process itself is started only when the budget allows its start-up, and plain messages (the loss of each
epoch) go to it as soon as it runs. Neither transport ever raises into the user's `fit`.

With a `Journal`, everything the worker receives is also written to the run folder at once (a capture as the
weights it holds) and deleted once written for good, so a SIGKILL of the training process loses nothing that
`python -m core recover` cannot write afterwards.
"""

from __future__ import annotations

import atexit
import collections
import os
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable

from core.capture.sink import CPU_REPORT, RunSink, write_frame
from core.store.journal import Journal

QUEUE_DEPTH = 4  # messages waiting at most between the training thread and the worker's thread
MAX_DEFERRED_BYTES = 256 * 2**20  # weights held back for later at most; beyond it, work runs over the budget
RECHECK_SECONDS = 0.25  # how often held-back work looks again whether it may run
IDLE_CORES = 1.5  # this many of the machine's cores idle (training waits on data, a GPU, a sleep) leave room
IDLE_WINDOW = 0.5  # seconds the machine must have been that idle, with this worker running nothing
SPAWN_SECONDS = 0.2  # CPU time a recording process takes to start (numpy's import, mostly), until it reports

_FINISH = object()


class Pacer:
    """How long work beside training must wait: while training runs, at most `share` of the wall time since it
    began goes to recording work (`spend` reports each piece's cost). `share=None`: never wait."""

    def __init__(self, share: float | None, clock: Callable[[], float] = time.monotonic):
        self.share = share
        self._clock = clock
        self._began: float | None = None  # when training began; None while no training runs
        self._spent = 0.0

    def training(self, running: bool) -> None:
        if running and self._began is None:
            self._began, self._spent = self._clock(), 0.0
        elif not running:
            self._began = None

    def spend(self, seconds: float) -> None:
        self._spent += seconds

    def delay(self, cost: float = 0.0) -> float:
        """Seconds to wait before work expected to cost `cost` seconds may start (0: now)."""
        if self.share is None or self._began is None:
            return 0.0
        allowed = self.share * (self._clock() - self._began)
        return max(0.0, (self._spent + cost - allowed) / self.share)


class _Training:
    """How many recorded fits are training in this process: the pacing holds while any is."""

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()

    def began(self) -> None:
        with self._lock:
            self._count += 1

    def ended(self) -> None:
        with self._lock:
            self._count = max(0, self._count - 1)

    def __bool__(self) -> bool:
        return self._count > 0


TRAINING = _Training()
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _idle_seconds() -> float | None:
    """Seconds the machine's cores have been idle in all, summed over cores (Linux); None where unknown."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
        return (int(fields[4]) + int(fields[5])) / _TICKS  # idle + iowait
    except (OSError, IndexError, ValueError):
        return None


_UNFINISHED: set[_QueuedWorker] = set()
EXIT_WAIT = 900.0  # seconds a process waits at exit for held-back snapshots before it leaves them to the journal


class _QueuedWorker:
    """A daemon thread that takes messages from a short queue and delivers them with `self._deliver`."""

    def __init__(self, name: str, budget: float | None = None, journal: Journal | None = None):
        self.pacer = Pacer(budget)
        self.journal = journal
        self._delivered_last = False
        self.deferred_bytes = 0
        self._held = 0
        self._quiet_since: tuple | None = None  # (wall, idle) since this worker last ran anything; None: from now
        self._idle_until = 0.0  # the machine was found idle: held work runs freely until then
        self._messages: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        _UNFINISHED.add(self)
        self._thread.start()

    def submit(
        self,
        message: tuple | Callable[[], tuple | None],
        nbytes: int = 0,
        spill: Callable[[], tuple[str, dict]] | None = None,
    ) -> None:
        """Queue `message`, or a function returning one (or None, for nothing to send) that holds `nbytes` of
        data until it runs; functions run on this worker's thread, in the order they came. `spill` returns what
        the journal keeps of such a function, `(kind, payload)`; without it, a function is not journaled."""
        if self._thread.is_alive():
            self._messages.put((message, nbytes, spill))

    def finish(self, last: tuple | None = None) -> None:
        """Deliver `last` after everything queued, then stop. Returns at once; `wait` waits."""
        if self._thread.is_alive():
            self._messages.put((_FINISH, 0, last))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until everything is delivered (or `timeout` seconds); whether it is."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Messages and pieces of work not delivered yet."""
        return self._held + self._messages.qsize()

    @property
    def ready(self) -> bool:
        """Whether messages can be delivered now, with nothing to start first."""
        return True

    start_seconds = 0.0  # what starting the receiving end costs, for the budget (while not `ready`)

    def _loop(self) -> None:
        messages: collections.deque = collections.deque()  # (message, entry) waiting for the receiving end to start
        work: collections.deque = collections.deque()  # (function, nbytes, entry) waiting for the budget, in order
        finished, last, last_entry = False, None, None

        def receive(message, nbytes: int, extra) -> None:
            """Take one item handed over: journaled at once, however long it then waits."""
            nonlocal finished, last, last_entry
            if message is _FINISH:
                finished, last = True, extra
                if last is not None:  # a recovery sets the status training ended with
                    last_entry = self._journaled(lambda journal: journal.append(*last))
            elif callable(message):
                entry = self._journaled(lambda journal: journal.append(*extra())) if extra is not None else None
                work.append((message, nbytes, entry))
                self.deferred_bytes += nbytes
            else:
                messages.append((message, self._journaled(lambda journal: journal.append(*message))))

        try:
            while messages or work or not finished:
                while not finished:  # everything handed over so far, before any more work runs
                    try:
                        receive(*self._messages.get_nowait())
                    except queue.Empty:
                        break
                self._account()
                self._held = len(messages) + len(work)
                if messages:
                    delay = 0 if self.ready else self._delay(self.start_seconds)
                    if delay == 0:
                        while messages:
                            self._run(*messages.popleft())
                        continue
                elif work:
                    delay = self._delay()
                    if delay == 0:
                        function, nbytes, entry = work.popleft()
                        self.deferred_bytes -= nbytes
                        self._run(function, entry)
                        continue
                elif finished:  # nothing more will come
                    break
                else:
                    delay = None
                try:
                    receive(*self._messages.get(timeout=delay))
                except queue.Empty:
                    continue
            if last is not None:  # delivered after everything held back
                self._run(last, last_entry)
            self._delivered_last = True
        finally:
            self._held = 0
            self._stop()
            if self._delivered_last and self._complete():
                self._journaled(lambda journal: journal.close())
                self.journal = None
            _UNFINISHED.discard(self)

    def _journaled(self, operation: Callable[[Journal], str | None]) -> str | None:
        """Run one journal operation. A failure (a full disk) ends journaling for this run with a warning: the
        run is still recorded, but a kill of the training process would lose what is not written yet."""
        if self.journal is None:
            return None
        start = time.thread_time()
        try:
            return operation(self.journal)
        except Exception as error:
            journal, self.journal = self.journal, None
            warnings.warn(
                f"Strata could not write its recovery journal ({type(error).__name__}: {error}). The run is "
                "still recorded, but a kill of this process would now lose the snapshots not written yet.",
                RuntimeWarning,
                stacklevel=2,
            )
            try:
                journal.close()  # a journal with gaps would recover a run wrongly
            except Exception:
                pass
            return None
        finally:  # journaling is work beside training too: the budget counts its CPU time (not its disk waits)
            self.pacer.spend(time.thread_time() - start)

    def _written(self, entry: str | None) -> None:
        """What journal `entry` stands for is in the run for good."""
        if entry is not None:
            self._journaled(lambda journal: journal.done(entry))

    def _complete(self) -> bool:
        """Whether everything delivered was written (the journal then goes)."""
        return True

    def _delay(self, cost: float = 0.0) -> float:
        """How long held work waits before it may run: not at all when no training runs, when training leaves
        the CPU idle, or when holding more would take too much memory."""
        self.pacer.training(bool(TRAINING))  # first: work run for any reason counts against the budget
        if self.deferred_bytes > MAX_DEFERRED_BYTES:
            return 0
        delay = self.pacer.delay(cost)
        return (
            0
            if delay == 0 or time.monotonic() < self._idle_until or self._training_idle()
            else min(delay, RECHECK_SECONDS)
        )

    def _training_idle(self) -> bool:
        """Whether at least IDLE_CORES of the machine's cores stayed idle over the last IDLE_WINDOW or more in
        which this worker ran nothing: then training waits on something else (input, a GPU, a sleep), and
        work beside it takes nothing from it. A process the host merely runs slowly does not count: its cores
        are busy or stolen, not idle. Needs Linux's /proc/stat; elsewhere only the budget applies."""
        wall = time.monotonic()
        if self._quiet_since is None:  # the window starts now: /proc/stat is read only while work waits
            self._quiet_since = (wall, _idle_seconds())
            return False
        since_wall, since_idle = self._quiet_since
        if wall - since_wall < IDLE_WINDOW:
            return False
        idle = _idle_seconds()
        self._quiet_since = (wall, idle)
        needed = min(IDLE_CORES, (os.cpu_count() or 1) - 0.5)
        if idle is None or since_idle is None or (idle - since_idle) / (wall - since_wall) < needed:
            return False
        self._idle_until = wall + IDLE_WINDOW  # work for as long as the machine was seen idle, then look again
        return True

    def _run(self, work, entry: str | None = None) -> None:
        if callable(work):
            start = time.perf_counter()
            work = work()
            self.pacer.spend(time.perf_counter() - start)
        if work is not None:
            self._deliver(work, entry)
        else:
            self._written(entry)  # nothing to write (a failed probe pass): nothing to recover either
        self._quiet_since = None

    def _account(self) -> None:
        """Add what the analysis spent elsewhere to the pacer (a child process reports its CPU time)."""

    def _deliver(self, message: tuple, entry: str | None) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        pass


class ThreadWorker(_QueuedWorker):
    """Runs the sink in this process. Needed for in-memory fsspec roots, which a child process cannot see."""

    def __init__(self, budget: float | None = None, journal: Journal | None = None):
        self.sink = RunSink()
        super().__init__("strata-sink", budget, journal)

    def _deliver(self, message: tuple, entry: str | None) -> None:
        start = time.perf_counter()
        self.sink.handle(message)
        self.pacer.spend(time.perf_counter() - start)
        self._written(entry)


class ProcessWorker(_QueuedWorker):
    """Feeds a `python -m core.capture.sink` child over a pipe; the child does the numpy analysis and the writes, and
    reports its CPU time back after each message, which the pacing counts. The child starts with the first
    message the budget lets through; if it cannot start, the sink runs in this worker's thread instead."""

    def __init__(self, budget: float | None = None, journal: Journal | None = None):
        self._process: subprocess.Popen | None = None
        self._fallback: RunSink | None = None
        self._reports = b""
        self._child_cpu = 0.0
        self._broken = False
        self._in_flight: collections.deque = collections.deque()  # journal entries sent, in order, not yet reported
        super().__init__("strata-sink-feeder", budget, journal)

    @property
    def ready(self) -> bool:
        return self._process is not None or self._fallback is not None

    start_seconds = SPAWN_SECONDS

    def _spawn(self) -> None:
        env = dict(
            os.environ,
            # One BLAS thread: the matrices are small, and training needs the other core.
            OPENBLAS_NUM_THREADS="1",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "core.capture.sink", "--report-cpu"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
        except OSError as error:
            warnings.warn(
                f"Strata could not start its recording process ({error}); recording in a thread instead.",
                RuntimeWarning,
                stacklevel=1,
            )
            self._fallback = RunSink()
            return
        assert self._process.stdout is not None  # started with stdout=PIPE
        os.set_blocking(self._process.stdout.fileno(), False)
        # Counted until the child reports its own CPU time, which includes its start-up.
        self.pacer.spend(SPAWN_SECONDS)
        self._child_cpu = SPAWN_SECONDS

    def _deliver(self, message: tuple, entry: str | None) -> None:
        if not self.ready:
            self._spawn()
        if self._fallback is not None:
            self._fallback.handle(message)
            self._written(entry)
            return
        if self._broken:
            return
        assert self._process is not None  # ready, and no fallback: the child was started
        try:
            write_frame(self._process.stdin, message)
            self._in_flight.append(entry)  # written once the child reports it handled this message
        except (BrokenPipeError, OSError) as error:
            self._broken = True
            warnings.warn(
                f"Strata's recording process stopped ({error}); the rest of this run is not recorded.",
                RuntimeWarning,
                stacklevel=1,
            )

    def _account(self) -> None:
        if self._process is None:
            return
        assert self._process.stdout is not None  # started with stdout=PIPE
        try:
            self._reports += os.read(self._process.stdout.fileno(), 1 << 16)
        except (BlockingIOError, OSError, ValueError):
            return
        whole = len(self._reports) - len(self._reports) % CPU_REPORT.size
        if whole:
            (cpu,) = CPU_REPORT.unpack_from(self._reports, whole - CPU_REPORT.size)
            self._reports = self._reports[whole:]
            self.pacer.spend(cpu - self._child_cpu)
            self._child_cpu = cpu
            for _ in range(whole // CPU_REPORT.size):  # one report per message handled, in order
                if self._in_flight:
                    self._written(self._in_flight.popleft())

    def _stop(self) -> None:
        if self._process is None:
            return
        assert self._process.stdin is not None and self._process.stdout is not None  # started with both pipes
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()
        os.set_blocking(self._process.stdout.fileno(), True)
        self._account()  # the reports of the last messages
        self._process.stdout.close()

    def _complete(self) -> bool:
        return self._fallback is not None or (
            self._process is not None and self._process.returncode == 0 and not self._broken and not self._in_flight
        )


def start_worker(root: str, mode: str = "auto", budget: float | None = None, journal: Journal | None = None):
    """A ProcessWorker, except for in-memory roots or `mode="thread"`."""
    if mode == "thread" or root.startswith("memory://"):
        return ThreadWorker(budget, journal)
    return ProcessWorker(budget, journal)


def _exit_wait() -> float:
    """The most seconds `wait_for_all` waits at exit: STRATA_EXIT_WAIT, default 15 minutes."""
    try:
        return max(0.0, float(os.environ.get("STRATA_EXIT_WAIT", EXIT_WAIT)))
    except ValueError:
        return EXIT_WAIT


def wait_for_all(report_after: float = 1.0, timeout: float | None = None) -> None:
    """Wait for every worker's unfinished work (at exit: snapshots held back while training ran), saying so on
    stderr when it takes longer than `report_after` seconds. Ctrl-C stops waiting, and so does `timeout`
    (default `_exit_wait()`): a process never hangs at exit, and the journal keeps what was not written."""
    workers = list(_UNFINISHED)
    if not workers or all(w.wait(report_after) for w in workers):
        return
    deadline = time.monotonic() + (_exit_wait() if timeout is None else timeout)
    left = sum(w.waiting for w in workers)
    print(
        f"Strata: writing the last snapshots of the run ({left} to go; Ctrl-C to stop)...", file=sys.stderr, flush=True
    )
    try:
        for w in workers:
            if not w.wait(max(0.0, deadline - time.monotonic())):
                print(
                    "Strata: gave up waiting (STRATA_EXIT_WAIT); the run keeps the snapshots written so far.",
                    file=sys.stderr,
                    flush=True,
                )
                break
        else:
            return
    except KeyboardInterrupt:
        print("Strata: stopped; the run keeps the snapshots written so far.", file=sys.stderr, flush=True)
    for journal in {w.journal for w in workers if w.journal is not None}:
        runs = "" if journal.root == "runs" else f" --runs {journal.root}"
        print(f"Strata: `python -m core recover {journal.run_id}{runs}` writes the rest.", file=sys.stderr, flush=True)


atexit.register(wait_for_all)
