"""`manage.py serve`'s supervisor on real processes: a killed child is restarted after its
backoff, the others keep running. Times are passed in, so nothing depends on the clock."""
from __future__ import annotations

import sys
from pathlib import Path

from workers.supervisor import BACKOFF_FIRST, STABLE_SECONDS, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_a_killed_child_restarts_with_backoff_and_the_others_live_on(tmp_path: Path) -> None:
    said: list[str] = []
    supervisor = Supervisor(tmp_path, say=said.append)
    web = supervisor.spawn("web", SLEEPER)
    worker = supervisor.spawn("cpu0 worker", SLEEPER)
    try:
        web_pid, first_pid = web.proc.pid, worker.proc.pid
        worker.proc.kill()
        worker.proc.wait(10)
        t = worker.started + 1.0  # died quickly: first backoff
        supervisor.check(now=t)
        assert said[-1] == f"The cpu0 worker exited with code -9; restarting it in {BACKOFF_FIRST:g} s."
        supervisor.check(now=t + BACKOFF_FIRST / 2)
        assert worker.proc.pid == first_pid and worker.restarts == 0  # still backing off
        supervisor.check(now=t + BACKOFF_FIRST)
        assert worker.restarts == 1 and worker.proc.pid != first_pid and worker.proc.poll() is None
        assert web.proc.pid == web_pid and web.proc.poll() is None and web.history == []
        # Dying again at once doubles the wait; after a stable run it starts over.
        worker.proc.kill()
        worker.proc.wait(10)
        supervisor.check(now=worker.started + 1.0)
        assert said[-1].endswith(f"restarting it in {2 * BACKOFF_FIRST:g} s.")
        supervisor.check(now=worker.started + 1.0 + 2 * BACKOFF_FIRST)
        assert worker.restarts == 2
        worker.proc.kill()
        worker.proc.wait(10)
        supervisor.check(now=worker.started + STABLE_SECONDS + 1)
        assert said[-1].endswith(f"restarting it in {BACKOFF_FIRST:g} s.")
        assert worker.history == [-9, -9, -9]
    finally:
        supervisor.stop_all(grace=5)
    assert web.proc.poll() is not None and worker.proc.poll() is not None
