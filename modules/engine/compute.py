"""Where model work runs: on one compute thread per process, whichever thread that is.

Why (measured, benchmarks/decode_speed.py's "thread" rows): torch's CPU build uses GNU
OpenMP (libgomp). Every OS thread that enters a parallel region becomes the master of
an OpenMP team of its own and keeps that team's threads until it exits. libgomp counts
the threads of all teams together, and once they outnumber the CPUs it treats the
machine as oversubscribed: its threads stop spin-waiting between parallel regions (a
throttled spin of ~100 iterations instead of ~300,000) and sleep on a futex instead.
A decode step is ~600 small parallel regions, each now paying a wake-up, so a second
team on a 2-core machine slows decoding by a third to a half, on whichever thread. It
is the number of teams that matters, not which thread works.

So the process keeps one team:
* all jobs (model loads, the batch schedulers' decode loops) run one after another on
  one compute thread: the main thread while `python app.py` lends it
  (`lend_main_thread_while`), otherwise one long-lived daemon thread started by the
  first job (code that imports `demo` and launches it itself, the tests);
* request threads run torch on one core (`on_request_thread`: no team of their own)
  and free any team they made before; their model work (an explorer step, a zero-shot
  forward) runs on the compute thread instead while it is idle (`run_model_work`), on
  every core (benchmarks/request_work.py);
* a thread that gives the compute role up frees its team (`omp_pause_resource_all`).

The main thread is a resource of the whole process, so the job queue is too: it is
the one piece of module-level state here, and it only ever holds pending jobs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar
from pathlib import Path

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
F = TypeVar("F", bound=Callable)

_numbers = itertools.count(1)
_live_lock = threading.Lock()
_live: set[Job] = set()
# Who runs jobs now (the lent main thread, the daemon compute thread, or nobody yet),
# and the jobs waiting for it; both guarded by `_role`.
_role = threading.Condition()
_pending: deque[Job] = deque()
_calls: deque[Call] = deque()  # request threads' work, taken before jobs
_holder: threading.Thread | None = None
_daemon: threading.Thread | None = None
_running: Job | None = None  # the job the compute thread runs now


def _forget_threads_after_fork() -> None:
    """In a forked child (a ZeroGPU Space runs each @gpu call in one) only the forking
    thread exists: start with no compute thread, so the first job or call starts one,
    instead of queueing for a thread that is not there."""
    global _role, _holder, _daemon, _running, _live_lock
    _role, _live_lock = threading.Condition(), threading.Lock()
    _holder = _daemon = _running = None
    _pending.clear()
    _calls.clear()
    _live.clear()


os.register_at_fork(after_in_child=_forget_threads_after_fork)


class Job:
    """A function to run once, on the compute thread."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.target = target
        self.name = f"{name}-{next(_numbers)}"
        self._done = threading.Event()

    def run(self) -> None:
        try:
            self.target()
        except BaseException:  # a job reports its own errors; never let one end the loop
            log.exception("Job %s failed", self.name)
        finally:
            with _live_lock:
                _live.discard(self)
            self._done.set()

    def is_alive(self) -> bool:
        return not self._done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)


def start_job(target: Callable[[], None], name: str) -> Job:
    """Queue `target` for the compute thread (starting the daemon one if nobody holds the role)."""
    job = Job(target, name)
    with _live_lock:
        _live.add(job)
    with _role:
        _pending.append(job)
        if _holder is None:
            _hand_role_to_daemon()
        _role.notify_all()
    return job


class Call:
    """A request thread's function, run on the compute thread; the caller waits for it."""

    def __init__(self, function: Callable[[], T]) -> None:
        self.function = function
        self.outcome: tuple[bool, object] | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.outcome = (True, self.function())
        except BaseException as error:  # raised again on the caller's thread
            self.outcome = (False, error)
        finally:
            self.done.set()


def run_on_compute_thread(function: Callable[[], T]) -> T:
    """`function()` on the compute thread, with its whole OpenMP team, if that thread is
    idle; else here. Its result (or its exception).

    For model work of request threads, which get one core on their own thread. While a
    job runs (the chat batch's decode loop, a model load), the work runs here instead,
    beside it: waiting for a load would take seconds, and beside a decode loop one core
    is the better share. A decode step leaves the second core idle during its Python,
    so work on it there costs the chats less than the same work between their steps
    (measured: two chats got 34.1 tok/s beside back-to-back explorer steps, 28.3 with
    the steps served between theirs; benchmarks/request_work.py times the idle case).
    """
    with _role:
        here = _holder is threading.current_thread() or _running is not None
        if not here:  # `_next_job` takes calls before jobs: this one runs next
            call = Call(function)
            _calls.append(call)
            if _holder is None:
                _hand_role_to_daemon()
            _role.notify_all()
    if here:
        return function()
    call.done.wait()
    succeeded, value = call.outcome
    if not succeeded:
        raise value
    return value


def run_model_work(function: Callable[[], T], lock: threading.Lock | None = None) -> T:
    """`function()` in inference mode, holding `lock` (its model's) if given, where
    `run_on_compute_thread` puts it: how tasks run a model outside the chat batch."""
    def work() -> T:
        with lock or contextlib.nullcontext(), torch.inference_mode():
            return function()

    return run_on_compute_thread(work)


def compute_thread() -> threading.Thread | None:
    """The thread that runs jobs now (None before the first job or lend)."""
    return _holder


def _hand_role_to_daemon() -> None:
    """Give the compute role to the daemon thread, starting it on first use. Holds `_role`."""
    global _holder, _daemon
    if _daemon is None:
        _daemon = threading.Thread(target=_daemon_loop, name="compute", daemon=True)
        _holder = _daemon
        _daemon.start()
    else:
        _holder = _daemon
        _role.notify_all()


def _daemon_loop() -> None:
    me = threading.current_thread()
    while True:
        with _role:
            while _holder is not me:
                _role.wait()
        _take_jobs(me, threading.Event())


def _take_jobs(me: threading.Thread, stop: threading.Event) -> None:
    """Run queued jobs while `me` holds the compute role and `stop` is not set; then free
    this thread's OpenMP team, since the next holder will make its own."""
    global _running
    try:
        while (work := _next_job(me, stop)) is not None:
            try:
                work.run()
            finally:
                with _role:
                    _running = None
    finally:
        release_openmp_team()


def _next_job(me: threading.Thread, stop: threading.Event) -> Job | Call | None:
    """The next queued call or job (calls first), while `me` holds the role; None once it
    does not or `stop` is set."""
    global _running
    with _role:
        while not stop.is_set() and _holder is me:
            if _calls:
                return _calls.popleft()
            if _pending:
                _running = _pending.popleft()
                return _running
            _role.wait(timeout=0.1)  # `stop` is an Event of its own: look again now and then
        return None


def release_openmp_team() -> None:
    """Free this thread's OpenMP team (libgomp keeps one per thread that ever ran torch in
    parallel until the thread exits); the next parallel region here makes a new one."""
    pause = getattr(OPENMP, "omp_pause_resource_all", None)
    if pause is not None:
        pause(OMP_PAUSE_SOFT)


def leave_the_cores_to_the_compute_thread() -> None:
    """On a request thread: run torch on one core here, with no OpenMP team of its own.

    A second team would halve the compute thread's decoding (module docstring). Request
    paths call it through `on_request_thread`; on the compute thread it does nothing.
    """
    holder = _holder
    if (holder is None or threading.current_thread() is holder
            or getattr(_single_threaded, "done", False)):
        return
    _single_threaded.done = True
    if OPENMP is not None:
        OPENMP.omp_set_num_threads(1)
        release_openmp_team()


def on_request_thread(function: F) -> F:
    """Decorate a request handler that may run torch (load or run a model) on its thread.

    Before the call, and before each step of a generator (a server may move a
    generator between pool threads), the current thread leaves the cores to the
    compute thread (`leave_the_cores_to_the_compute_thread`). Explicit, so that asking
    the model cache for a model changes no thread's settings behind the caller's back.
    """
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def steps(*args, **kwargs):
            leave_the_cores_to_the_compute_thread()
            generator = function(*args, **kwargs)
            try:
                while True:
                    leave_the_cores_to_the_compute_thread()
                    try:
                        item = next(generator)
                    except StopIteration as finished:
                        return finished.value
                    yield item
            finally:
                generator.close()

        return steps  # type: ignore[return-value]

    @functools.wraps(function)
    def call(*args, **kwargs):
        leave_the_cores_to_the_compute_thread()
        return function(*args, **kwargs)

    return call  # type: ignore[return-value]


def _find_openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded, to set this thread's team size alone
    (torch.set_num_threads changes it for the whole process)."""
    folder = Path(torch.__file__).parent / "lib"
    for library in sorted(folder.glob("libgomp*.so*")) + sorted(folder.glob("libiomp*.so*")):
        try:
            openmp = ctypes.CDLL(str(library))
            openmp.omp_set_num_threads  # noqa: B018 (raises AttributeError if absent)
            return openmp
        except (OSError, AttributeError):
            continue
    return None


_single_threaded = threading.local()
OPENMP = _find_openmp()
OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: omp_pause_soft


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Run torch on one core on this thread only, then restore its OpenMP team size.

    For measurements (the CPU profile's probe): one core gives kernel timings that do
    not depend on which thread measures or on how busy the other cores are.
    """
    if OPENMP is None:
        yield
        return
    before = OPENMP.omp_get_max_threads()
    OPENMP.omp_set_num_threads(1)
    try:
        yield
    finally:
        OPENMP.omp_set_num_threads(before)


def live_jobs(prefix: str) -> int:
    """Jobs named `prefix…` that are queued or running."""
    with _live_lock:
        return sum(job.name.startswith(prefix) for job in _live)


def lend_main_thread_while(work: Callable[[], T]) -> T:
    """Run `work` on a helper thread while this (the main) thread holds the compute role
    and runs jobs; its result. The daemon compute thread, if any, waits meanwhile.

    How `python app.py` serves (work: the HTTP server), and how tests and benchmarks
    run a request as the app would. An exception from `work` is raised here.
    """
    global _holder
    stop = threading.Event()
    outcome: list[tuple[bool, object]] = []

    def helper() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as error:  # handed to the main thread below
            outcome.append((False, error))
        finally:
            stop.set()

    me = threading.current_thread()
    with _role:
        _holder = me
        _role.notify_all()
    threading.Thread(target=helper, name="main-thread-lender", daemon=True).start()
    try:
        _take_jobs(me, stop)
    finally:
        with _role:
            _holder = None
            if _daemon is not None or _pending or _calls:
                _hand_role_to_daemon()  # jobs still queued, or the daemon had the role before
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value
