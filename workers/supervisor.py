"""A small process supervisor for `manage.py serve`: it keeps the web server and the
workers running, restarting one that dies with an exponential backoff, so that a killed
device worker costs its device a few seconds instead of taking the whole system down.
(The job that worker ran resumes from its last snapshot: see workers/ranks.py.)"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .procs import end_group, signal_group

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A process that ran this long before dying starts again with the first backoff.
STABLE_SECONDS = 60.0


@dataclass
class Child:
    name: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None  # when a dead child is due to start again
    history: list[int] = field(default_factory=list)  # exit codes, newest last


class Supervisor:
    def __init__(self, cwd: Path | str, say: Callable[[str], None] = print) -> None:
        self.cwd = cwd
        self.say = say
        self.children: list[Child] = []

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name=name, cmd=cmd, env={**os.environ, **(env or {})})
        self._start(child)
        self.children.append(child)
        return child

    def _start(self, child: Child) -> None:
        # Its own session: stopping a child ends its whole process group (a worker's pool).
        child.proc = subprocess.Popen(child.cmd, env=child.env, cwd=self.cwd, start_new_session=True)
        child.started = time.monotonic()
        child.restart_at = None

    def check(self, now: float | None = None) -> None:
        """One round: note children that died and start those whose backoff is over."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            assert child.proc is not None
            if child.restart_at is None and child.proc.poll() is not None:
                code = child.proc.returncode
                child.history.append(code)
                if now - child.started >= STABLE_SECONDS:
                    child.backoff = BACKOFF_FIRST
                child.restart_at = now + child.backoff
                self.say(f"The {child.name} exited with code {code}; restarting it in {child.backoff:g} s.")
                child.backoff = min(child.backoff * 2, BACKOFF_MAX)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)
                self.say(f"Restarted the {child.name} (restart {child.restarts}).")

    def run_forever(self, interval: float = 0.5) -> None:
        while True:
            self.check()
            time.sleep(interval)

    def stop_all(self, grace: float = 15.0) -> None:
        running = [c.proc for c in reversed(self.children) if c.proc is not None and c.proc.poll() is None]
        for proc in running:  # all at once, then one shared grace period
            signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            end_group(proc, max(0.1, deadline - time.monotonic()))
