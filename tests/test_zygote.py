"""The zygote that job children are forked from (workers/zygote.py), on real processes:
a child runs its module as `python -m` would, in its own process group, with its exit
code reported; it dies with the process that asked for it; no zygote, no fork."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from workers import zygote

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import os, sys, time
print("argv", sys.argv[1:], "env", os.environ.get("JOB_VALUE"), len(os.environ.get("BIG", "")), flush=True)
print("to the log", file=sys.stderr, flush=True)
if "--sleep" in sys.argv:
    time.sleep(60)
sys.exit(3)
"""
ASKER = """
import os, sys, time
from pathlib import Path
from workers import zygote
log = open(sys.argv[2], "a")
child = zygote.start(Path(sys.argv[1]), "zygote_child", ["--sleep"], dict(os.environ), sys.argv[3], log.fileno())
print(child.pid, flush=True)
time.sleep(60)
"""


def wait_for(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def running_zygote(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "zygote_child.py").write_text(CHILD)
    socket = tmp_path / "z.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.zygote", "--socket", str(socket), "--preload", "json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(tmp_path)}, stderr=subprocess.DEVNULL,
    )
    wait_for(socket.exists)
    yield socket
    proc.kill()
    proc.wait()


def test_a_forked_child_runs_its_module_like_python_dash_m(running_zygote: Path, tmp_path: Path) -> None:
    log = (tmp_path / "job.log").open("a")
    # A large environment (Kubernetes sets many variables) arrives whole.
    env = {**os.environ, "JOB_VALUE": "42", "BIG": "x" * 200_000, "PYTHONPATH": str(tmp_path)}
    child = zygote.start(running_zygote, "zygote_child", ["--spec", "x.json"], env, str(tmp_path), log.fileno())
    assert child.stdout.readline() == b"argv ['--spec', 'x.json'] env 42 200000\n"
    assert child.wait(timeout=30) == 3
    assert "to the log" in (tmp_path / "job.log").read_text()


def test_a_child_has_its_own_group_and_dies_with_whoever_asked_for_it(running_zygote: Path, tmp_path: Path) -> None:
    (tmp_path / "asker.py").write_text(ASKER)
    asker = subprocess.Popen(
        [sys.executable, str(tmp_path / "asker.py"), str(running_zygote), str(tmp_path / "job.log"), str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"}, stdout=subprocess.PIPE, text=True,
    )
    pid = int(asker.stdout.readline())
    child = psutil.Process(pid)
    assert os.getpgid(pid) == pid  # its own process group: an abort ends it and its workers
    # ps shows the job, not the zygote (the child sets its title as it starts).
    wait_for(lambda: "-m zygote_child --sleep" in " ".join(child.cmdline()))
    asker.send_signal(signal.SIGKILL)  # the runner (a Celery pool process) is killed
    asker.wait()
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def test_without_a_zygote_the_runner_is_told_to_start_the_child_itself(tmp_path: Path) -> None:
    with pytest.raises(zygote.ZygoteUnavailable):
        zygote.start(tmp_path / "nobody.sock", "json", [], dict(os.environ), str(tmp_path), 2)
