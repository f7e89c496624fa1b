"""Where generation runs: on the process's main thread when the app owns it.

Measured on this project's 2-core machines (benchmarks/decode_speed.py): torch's
OpenMP-parallel kernels run about twice as slowly on any thread but the process's
initial one (torch's bundled libgomp), so a reply generated on a fresh thread decodes
at half speed. `python app.py` therefore serves HTTP from a background thread and
lends its main thread to `run_jobs`; `start_job` hands generation to it. Where
nothing runs that loop (code that imports `demo` and launches it itself, the tests) each job gets a thread
of its own, as before. Jobs run one after another (a model's batch scheduler is one
job while it has sequences); a job whose request was cancelled while it waited returns at once.

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
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar
from pathlib import Path

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
F = TypeVar("F", bound=Callable)

_numbers = itertools.count(1)
_pending: queue.SimpleQueue[Job] = queue.SimpleQueue()
_loop_running = threading.Event()
_live_lock = threading.Lock()
_live: set[Job] = set()


class Job:
    """A function to run once, on the main thread's loop or on its own thread."""

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
    """Run `target` on the main thread's loop if it is running, else on a new thread."""
    job = Job(target, name)
    with _live_lock:
        _live.add(job)
    if _loop_running.is_set():
        _pending.put(job)
    else:
        _on_own_thread(job)
    return job


def _on_own_thread(job: Job) -> None:
    threading.Thread(target=job.run, name=job.name, daemon=True).start()


def leave_the_cores_to_the_main_thread() -> None:
    """On a request thread, while the main thread generates: run torch on one core here.

    Every thread that runs torch keeps its own OpenMP team; once more team threads
    live than there are cores, the runtime stops spinning between parallel regions and
    the main thread's decoding halves (measured). One thread per request thread keeps
    the teams to the main thread's own. Request paths call it through `on_request_thread`.
    """
    if (not _loop_running.is_set() or threading.current_thread() is threading.main_thread()
            or getattr(_single_threaded, "done", False)):
        return
    _single_threaded.done = True
    if OPENMP is not None:
        OPENMP.omp_set_num_threads(1)


def on_request_thread(function: F) -> F:
    """Decorate a request handler that may run torch (load or run a model) on its thread.

    Before the call, and before each step of a generator (a server may move a
    generator between pool threads), the current thread leaves the cores to the
    main thread (`leave_the_cores_to_the_main_thread`). Explicit, so that asking the
    model cache for a model changes no thread's settings behind the caller's back.
    """
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def steps(*args, **kwargs):
            leave_the_cores_to_the_main_thread()
            generator = function(*args, **kwargs)
            try:
                while True:
                    leave_the_cores_to_the_main_thread()
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
        leave_the_cores_to_the_main_thread()
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
    """Run `work` on a helper thread while this (the main) thread runs jobs; its result.

    How `python app.py` serves (work: the HTTP server), and how tests and benchmarks
    run a request as the app would. An exception from `work` is raised here.
    """
    stop = threading.Event()
    outcome: list[tuple[bool, object]] = []

    def helper() -> None:
        _loop_running.wait()  # jobs submitted by `work` must find the loop
        try:
            outcome.append((True, work()))
        except BaseException as error:  # handed to the main thread below
            outcome.append((False, error))
        finally:
            stop.set()

    threading.Thread(target=helper, name="main-thread-lender", daemon=True).start()
    run_jobs(stop)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def run_jobs(stop: threading.Event) -> None:
    """Run submitted jobs on this (the main) thread until `stop` is set.

    Jobs still queued when it stops are handed to threads of their own.
    """
    _loop_running.set()
    try:
        while not stop.is_set():
            try:
                job = _pending.get(timeout=0.1)
            except queue.Empty:
                continue
            job.run()
    finally:
        _loop_running.clear()
        while True:
            try:
                job = _pending.get_nowait()
            except queue.Empty:
                break
            _on_own_thread(job)
