"""A pre-imported parent for job children: a job starts without paying for its imports.

A device worker starts one zygote when it is ready (workers/worker_hooks.py):

    python -m workers.zygote --socket PATH --preload models_app.training.train ...

It imports the device kinds' child modules (for training: torch and the trainer, about
1.3 s on a CPU host), then waits on a Unix socket. For each job the runner sends the
module, its arguments, the environment, and two file descriptors: the write end of the
child's stdout pipe and its log file. The zygote forks; the child, in its own process group,
points stdout and stderr at them, takes the environment, and runs the module as
`__main__`, exactly as `python -m` would. The zygote replies with the child's pid at
once and with its exit code when it ends, on the same connection.

Lifetimes: the zygote dies with its worker (PR_SET_PDEATHSIG). A child watches the
process that asked for it (its runner, a Celery pool process) through a pidfd and ends
its whole process group if the runner dies: the guarantee that PR_SET_PDEATHSIG gives a
direct child. When no zygote answers (not started yet, or gone), the runner starts the
child directly, as before.

Only the calling thread survives a fork, so the zygote runs no threads of its own (one
selector loop over the listening socket and a self-pipe woken by SIGCHLD), and the
preload only imports: no torch operation runs before a fork. (Importing numpy starts
OpenBLAS's threads; OpenBLAS shuts them down around a fork itself.)
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import runpy
import select
import selectors
import signal
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import setproctitle

MAX_REQUEST_BYTES = 16 << 20  # the environment can be large (Kubernetes)
REQUEST_SECONDS = 10.0  # how long either side waits for the other's request or reply
HEADER = 8  # the request's length, sent with the file descriptors


class ZygoteUnavailable(Exception):
    """No zygote answered: start the child directly."""


def socket_path(device_uuid: str, scope: str) -> Path:
    """Where a device's zygote listens: a private folder (a Unix socket path must stay
    under about 100 bytes, so not under the data directory), one name per device and
    installation (`scope`: its data directory), so two installations on one host, such
    as a test run beside `make run`, never share a zygote."""
    folder = Path("/tmp") / f"digits-zygotes-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    # Another user may have made this folder first: then our environment (secrets) and
    # file descriptors would go to their process. Use it only if it is ours alone.
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ZygoteUnavailable(f"{folder} is not a private folder of this user; not using a zygote")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_uuid)[-40:]
    digest = hashlib.sha256(scope.encode()).hexdigest()[:12]
    return folder / f"{safe}-{digest}.sock"


# -- the runner's side ---------------------------------------------------------------------


class ZygoteChild:
    """A child started by the zygote, with the parts of subprocess.Popen the runner uses."""

    def __init__(self, conn: socket.socket, pid: int, stdout: IO[bytes]) -> None:
        self.conn, self.pid, self.stdout = conn, pid, stdout
        self.returncode: int | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            if self.returncode is None:
                self.conn.settimeout(timeout)
                try:
                    reply = _read_line(self.conn, self)
                except TimeoutError:
                    raise subprocess.TimeoutExpired(f"job child {self.pid}", timeout or 0) from None
                except (OSError, ValueError):
                    reply = None
                if reply is None:
                    # The zygote is gone (its worker died) before reporting the exit: end
                    # the child's group ourselves, so nothing runs on unaccounted for.
                    try:
                        os.killpg(self.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.returncode = int(reply["exit"]) if reply else -signal.SIGKILL
                self.conn.close()
            return self.returncode


def start(path: Path, module: str, args: list[str], env: dict[str, str], cwd: str, log_fd: int) -> ZygoteChild:
    """Start `python -m module *args` through the zygote at `path`."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError as exc:
        conn.close()
        raise ZygoteUnavailable(str(exc)) from None
    read_end, write_end = os.pipe()
    try:
        conn.settimeout(REQUEST_SECONDS)
        payload = json.dumps({"module": module, "args": args, "env": env, "cwd": cwd, "watch": os.getpid()}).encode()
        socket.send_fds(conn, [len(payload).to_bytes(HEADER, "big")], [write_end, log_fd])
        conn.sendall(payload)
    except OSError as exc:
        os.close(read_end)
        conn.close()
        raise ZygoteUnavailable(str(exc)) from None
    finally:
        os.close(write_end)  # the child holds it now: EOF on read_end when the child ends
    stdout = os.fdopen(read_end, "rb")
    child = ZygoteChild(conn, 0, stdout)
    try:
        reply = _read_line(conn, child)
    except (OSError, ValueError):
        reply = None
    conn.settimeout(None)
    if not reply or "pid" not in reply:
        stdout.close()
        conn.close()
        raise ZygoteUnavailable(f"the zygote refused the request: {reply}")
    child.pid = int(reply["pid"])
    return child


def _read_line(conn: socket.socket, child: ZygoteChild) -> dict[str, Any] | None:
    while b"\n" not in child._buffer:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        child._buffer += chunk
    line, child._buffer = child._buffer.split(b"\n", 1)
    return json.loads(line)


# -- the zygote --------------------------------------------------------------------------


@dataclass
class _Job:
    conn: socket.socket


def serve(path: Path, preload: list[str]) -> None:
    # A child can only die with its runner through a pidfd (Linux 5.3+, and allowed by the
    # container's seccomp profile): without one, serve nothing; runners start children
    # themselves.
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (OSError, AttributeError) as exc:
        print(f"zygote: no pidfd on this system ({exc}); job children start directly", file=sys.stderr, flush=True)
        return
    # setproctitle finds the memory it may rewrite from argv and environ as they are at
    # its first call: make that call now, before any child changes its environment.
    setproctitle.getproctitle()
    for module in preload:
        importlib.import_module(module)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(8)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    # A graceful-stop request that reaches a child before its handler is set must not
    # kill it (SIGUSR1's default): ignored from the fork on (inherited), until the child
    # sets its handler; the runner repeats the request until the child stops.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    jobs: dict[int, _Job] = {}
    print(f"zygote ready on {path} (preloaded {', '.join(preload) or 'nothing'})", file=sys.stderr, flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                try:
                    conn, _ = listener.accept()
                except OSError:  # out of descriptors, say: the runner starts its child itself
                    continue
                others = [job.conn.fileno() for job in jobs.values()]
                _handle(conn, listener, jobs, wake_read, wake_write, selector.fileno(), *others)
            else:
                try:
                    os.read(wake_read, 4096)
                except BlockingIOError:
                    pass
                _reap(jobs)


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request: its length with the two file descriptors, then the JSON body."""
    conn.settimeout(REQUEST_SECONDS)  # a silent peer must not freeze the zygote
    header, received, _, _ = socket.recv_fds(conn, HEADER, 2)
    try:
        while len(header) < HEADER:
            chunk = conn.recv(HEADER - len(header))
            if not chunk:
                raise ValueError("the request ended early")
            header += chunk
        size = int.from_bytes(header, "big")
        if len(received) != 2 or size > MAX_REQUEST_BYTES:
            raise ValueError(f"a malformed request ({len(received)} descriptors, {size} bytes)")
        body = b""
        while len(body) < size:
            chunk = conn.recv(min(1 << 16, size - len(body)))
            if not chunk:
                raise ValueError("the request ended early")
            body += chunk
        return json.loads(body.decode()), received
    except BaseException:
        for fd in received:
            os.close(fd)
        raise


def _refuse(conn: socket.socket, reason: str) -> None:
    try:
        conn.sendall(json.dumps({"error": reason}).encode() + b"\n")
    except OSError:
        pass
    conn.close()


def _handle(conn: socket.socket, listener: socket.socket, jobs: dict[int, _Job], *fds: int) -> None:
    try:
        request, (stdout_fd, log_fd) = _receive(conn)
    except (OSError, ValueError) as exc:
        _refuse(conn, str(exc))
        return
    try:
        pid = os.fork()
    except OSError as exc:  # out of memory or processes: the runner starts its child itself
        os.close(stdout_fd)
        os.close(log_fd)
        _refuse(conn, str(exc))
        return
    conn.settimeout(None)
    if pid == 0:  # the job's child: never returns
        _run_child(request, stdout_fd, log_fd, [conn.fileno(), listener.fileno(), *fds])
    # Its own process group before its pid is reported: an abort signals the group, and
    # ends its loader workers with it.
    try:
        os.setpgid(pid, pid)
    except OSError:  # the child set it first, or already ended
        pass
    os.close(stdout_fd)
    os.close(log_fd)
    jobs[pid] = _Job(conn)
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass


def _reap(jobs: dict[int, _Job]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job = jobs.pop(pid, None)
        if job is not None:
            try:
                job.conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:
                pass
            job.conn.close()


def _run_child(request: dict[str, Any], stdout_fd: int, log_fd: int, inherited: list[int]) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in inherited:
            os.close(fd)
        os.setpgid(0, 0)  # its own process group (also set by the zygote: no race either way)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(log_fd, 2)
        for fd in (null, stdout_fd, log_fd):
            os.close(fd)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        # What `ps` shows: the job's own command line, not the zygote's.
        setproctitle.setproctitle(" ".join([sys.executable, "-m", request["module"], *request["args"]]))
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        # As `python -m` would: the child's PYTHONPATH comes first on its module path.
        sys.path[:0] = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        _die_with(int(request["watch"]))
        sys.argv = [request["module"], *request["args"]]
        # Run as __main__ from its source, as `python -m` does; the preloaded copy stays
        # out of the way (its imports, torch among them, are what the preload was for).
        sys.modules.pop(request["module"], None)
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # anything else: report it in the job log, exit non-zero
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with(pid: int) -> None:
    """End this process group when `pid` (the runner) ends."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # the runner is gone already
        os.killpg(0, signal.SIGKILL)
        return

    def watch() -> None:
        select.select([fd], [], [])  # readable once the process has ended
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="runner-watch", daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description="A pre-imported parent for job children.")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--preload", nargs="*", default=[])
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())
    serve(args.socket, args.preload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
