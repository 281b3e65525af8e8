"""The worker pipe's protocol: answers, errors, and the handler time each answer carries."""

from __future__ import annotations

import time

import pytest

from backends.worker_process import WorkerError, WorkerProcess, serve, started


def _sleeper(conn) -> None:
    """A worker whose "sleep" command sleeps `payload` seconds and answers how long it was asked to."""
    if started(conn, lambda: ("state", "up")) is None:
        return

    def handle(command: str, payload: object) -> object:
        if command == "sleep":
            time.sleep(float(payload))  # type: ignore[arg-type]
            return payload
        if command == "close":
            return None
        raise ValueError(f"unknown command {command!r}")

    serve(conn, handle)


@pytest.fixture(scope="module")
def worker():
    w = WorkerProcess(_sleeper, (), name="test-sleeper")
    yield w
    w.close(5)


def test_a_call_splits_into_the_handlers_time_and_the_hand_off(worker) -> None:
    assert worker.ready == "up"
    assert worker.call("sleep", 0.01) == 0.01  # not kept until asked
    worker.handler_log = []
    for seconds in (0.05, 0.0, 0.02):
        began = time.perf_counter()
        worker.call("sleep", seconds)
        took = time.perf_counter() - began
        command, handler_s = worker.handler_log[-1]
        assert command == "sleep"
        assert seconds <= handler_s <= took  # the handler's own time, within the call's
    assert [c for c, _ in worker.handler_log] == ["sleep"] * 3
    worker.handler_log = None


def test_an_error_is_raised_with_its_line_and_the_worker_carries_on(worker) -> None:
    worker.handler_log = []
    with pytest.raises(WorkerError, match="ValueError: unknown command 'nap'"):
        worker.call("nap")
    assert worker.handler_log == []  # an error carries no handler time
    assert worker.call("sleep", 0.0) == 0.0
    worker.handler_log = None
