"""Jobs run on one compute thread: the main thread when the app lends it, else a daemon thread.

pytest runs tests on the process's main thread, so these tests lend it
(`lend_main_thread_while`) and submit work from another thread, as the app's
request threads do.
"""

from __future__ import annotations

import threading

import pytest
import torch

from modules.tasks.chat import GenerationParams, live_generation_threads, stream_chat
from modules.engine.compute import compute_thread, lend_main_thread_while, live_jobs, start_job
from modules.engine.model_cache import ModelKind


def test_jobs_run_in_order_on_the_main_thread_and_survive_a_failing_one():
    ran: list[tuple[int, threading.Thread]] = []

    def record(number: int) -> None:
        ran.append((number, threading.current_thread()))
        if number == 1:
            raise RuntimeError("a job that fails")  # logged; the loop goes on

    def submit() -> None:
        jobs = [start_job(lambda n=n: record(n), "test-job") for n in range(3)]
        for job in jobs:
            job.join(timeout=10)
            assert not job.is_alive()

    lend_main_thread_while(submit)
    assert [n for n, _ in ran] == [0, 1, 2]
    assert all(thread is threading.main_thread() for _, thread in ran)
    assert live_jobs("test-job") == 0


def test_without_a_lent_main_thread_jobs_share_one_compute_thread():
    """One thread runs every job, one after another: each thread that runs torch in
    parallel keeps an OpenMP team, and two teams slow decoding (compute.py)."""
    where: list[threading.Thread] = []
    running = threading.Lock()
    overlaps: list[bool] = []

    def record() -> None:
        overlaps.append(not running.acquire(blocking=False))
        where.append(threading.current_thread())
        threading.Event().wait(0.02)
        running.release()

    jobs = [start_job(record, "test-job") for _ in range(3)]
    for job in jobs:
        job.join(timeout=10)
    assert len(where) == 3 and len(set(where)) == 1
    assert where[0] is not threading.main_thread() and where[0] is compute_thread()
    assert overlaps == [False, False, False]
    assert live_jobs("test-job") == 0


def test_lending_the_main_thread_takes_the_role_and_hands_it_back():
    """A daemon compute thread already exists (earlier jobs): while the main thread is
    lent, jobs run there, and afterwards on the daemon again."""
    start_job(lambda: None, "test-job").join(timeout=10)
    daemon = compute_thread()
    assert daemon is not None and daemon is not threading.main_thread()
    ran: list[threading.Thread] = []

    def submit() -> None:
        for _ in range(3):
            start_job(lambda: ran.append(threading.current_thread()), "test-job").join(timeout=10)

    lend_main_thread_while(submit)
    assert ran == [threading.main_thread()] * 3
    start_job(lambda: ran.append(threading.current_thread()), "test-job").join(timeout=10)
    assert ran[-1] is daemon and compute_thread() is daemon


def test_giving_up_the_role_frees_the_openmp_team():
    """The thread that stops running jobs frees its team (omp_pause_resource_all), so it
    does not count against the next holder's; a later parallel region makes a new one."""
    from modules.engine.compute import OPENMP as omp
    from modules.engine.compute import release_openmp_team

    if omp is None or not hasattr(omp, "omp_pause_resource_all"):
        pytest.skip("no OpenMP 5 runtime beside torch")
    calls: list[threading.Thread] = []
    real = omp.omp_pause_resource_all
    omp.omp_pause_resource_all = lambda kind: calls.append(threading.current_thread()) or real(kind)
    try:
        lend_main_thread_while(lambda: start_job(lambda: None, "test-job").join(timeout=10))
    finally:
        omp.omp_pause_resource_all = real
    assert threading.main_thread() in calls
    release_openmp_team()  # and torch still works afterwards, in parallel
    a = torch.randn(256, 256)
    assert torch.allclose((a @ a)[0], sum(a[0, k] * a[k] for k in range(256)), atol=1e-3)


def test_a_reply_generated_on_the_main_thread_is_the_same_reply(shared_cache, tiny_causal_lm_dir):
    tiny = shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    messages = [{"role": "user", "content": "Hello there"}]
    params = GenerationParams(do_sample=False, max_new_tokens=12)
    on_a_thread = list(stream_chat(tiny, messages, params))[-1].text
    threads: set[threading.Thread] = set()
    hook = tiny.model.get_input_embeddings().register_forward_hook(  # every pass, decode steps too
        lambda *_: threads.add(threading.current_thread()))
    replies: list[str] = []
    try:
        lend_main_thread_while(
            lambda: replies.append(list(stream_chat(tiny, messages, params))[-1].text))
    finally:
        hook.remove()
    assert replies == [on_a_thread]
    assert threads == {threading.main_thread()}
    assert live_generation_threads() == 0


def test_request_threads_leave_the_cores_to_the_compute_thread(shared_cache, tiny_causal_lm_dir):
    """While the main thread generates, a request handler marked `on_request_thread` runs
    torch on one core (its own OpenMP team would halve the main thread's speed)."""
    from modules.engine.compute import OPENMP as omp
    from modules.engine.compute import on_request_thread

    if omp is None:
        pytest.skip("no OpenMP runtime beside torch: nothing to limit")
    seen: list[int] = []

    @on_request_thread
    def request() -> None:
        shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
        seen.append(omp.omp_get_max_threads())

    main_before = omp.omp_get_max_threads()
    lend_main_thread_while(request)
    assert seen == [1]
    assert omp.omp_get_max_threads() == main_before  # the main thread keeps its cores


def test_a_streaming_request_handler_is_limited_at_every_step():
    """Gradio may run each step of a generator on a different pool thread."""
    import inspect

    from modules.engine.compute import OPENMP as omp
    from modules.engine.compute import on_request_thread

    if omp is None:
        pytest.skip("no OpenMP runtime beside torch: nothing to limit")
    seen: list[tuple[int, int]] = []

    @on_request_thread
    def steps(count: int):
        for step in range(count):
            seen.append((step, omp.omp_get_max_threads()))
            yield step

    def consume_on_fresh_threads() -> None:
        generator = steps(3)
        for _ in range(3):
            thread = threading.Thread(target=next, args=(generator,))
            thread.start()
            thread.join()
        generator.close()

    assert inspect.isgeneratorfunction(steps) and steps.__name__ == "steps"
    lend_main_thread_while(consume_on_fresh_threads)
    assert seen == [(0, 1), (1, 1), (2, 1)]


def test_a_request_threads_model_work_runs_on_the_compute_thread_with_its_cores():
    """An explorer step or a zero-shot forward (`run_model_work`) runs where the cores
    are: on a request thread torch gets one core, on the compute thread all of them."""
    from modules.engine.compute import OPENMP as omp
    from modules.engine.compute import on_request_thread, run_model_work

    seen: list[tuple[threading.Thread, bool, int | None]] = []
    lock = threading.Lock()

    def work() -> str:
        seen.append((threading.current_thread(), torch.is_inference_mode_enabled(),
                     omp.omp_get_max_threads() if omp else None))
        assert lock.locked()  # held for the work, released after
        return "result"

    @on_request_thread
    def request() -> str:
        return run_model_work(work, lock)

    assert lend_main_thread_while(request) == "result"
    assert not lock.locked()
    (thread, inference, cores), = seen
    assert thread is threading.main_thread() and inference
    if omp is not None:
        assert cores == torch.get_num_threads()


def test_model_work_raises_its_error_in_the_caller_and_the_thread_goes_on():
    from modules.engine.compute import run_on_compute_thread

    def failing() -> None:
        raise ValueError("bad input")

    def request() -> int:
        with pytest.raises(ValueError, match="bad input"):
            run_on_compute_thread(failing)
        return run_on_compute_thread(lambda: 41) + 1

    assert lend_main_thread_while(request) == 42


def test_model_work_beside_a_running_batch_runs_on_the_request_thread(shared_cache, tiny_causal_lm_dir):
    """While a chat generates (the scheduler's loop is one long job on the compute thread),
    an explorer step does not wait for the reply to end: it runs on its own thread."""
    from modules.engine.batching import live_sequences
    from modules.engine.compute import on_request_thread, run_model_work
    from modules.tasks.chat import stream_chat

    tiny = shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    messages = [{"role": "user", "content": "Hello there"}]
    params = GenerationParams(do_sample=False, max_new_tokens=64)
    served: list[tuple[threading.Thread, int]] = []

    @on_request_thread
    def request() -> list:
        chunks = []
        for chunk in stream_chat(tiny, messages, params):
            chunks.append(chunk)
            if len(chunks) == 2:  # the reply is streaming: the batch loop is running
                served.append(run_model_work(lambda: (threading.current_thread(), live_sequences())))
        return chunks

    chunks = lend_main_thread_while(request)
    assert len(chunks) > 3 and chunks[-1].finish_reason is not None
    (thread, live), = served
    assert thread is not threading.main_thread() and live == 1  # beside the live reply
    assert live_sequences() == 0


def test_model_work_does_not_wait_behind_a_model_load():
    """While the compute thread runs a job (a model load takes seconds), model work for an
    already loaded model runs on the caller's thread instead."""
    from modules.engine.compute import run_on_compute_thread

    loading, release = threading.Event(), threading.Event()

    def model_load() -> None:
        loading.set()
        release.wait(10)

    def request() -> str:
        job = start_job(model_load, "test-job")
        loading.wait(10)
        where = run_on_compute_thread(lambda: threading.current_thread().name)
        release.set()
        job.join(timeout=10)
        return where

    assert lend_main_thread_while(request) == "main-thread-lender"


def test_a_forked_child_runs_jobs_and_model_work_on_a_compute_thread_of_its_own():
    """A ZeroGPU Space runs each @gpu call in a forked process, where the parent's compute
    thread does not exist: jobs and model work there must not wait for it."""
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    from modules.engine.compute import run_on_compute_thread

    def forked() -> int:
        pid = os.fork()
        if pid == 0:  # the child: plain Python only (no torch after fork)
            code = 1
            try:
                done = threading.Event()
                start_job(done.set, "test-job")
                ran = done.wait(10) and run_on_compute_thread(lambda: "worked") == "worked"
                code = 0 if ran else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    start_job(lambda: None, "test-job").join(timeout=10)  # the parent has a compute thread
    assert lend_main_thread_while(forked) == 0
