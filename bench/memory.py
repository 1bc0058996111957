"""Memory at idle: resident memory (RSS) of every process `make run` starts.

    .venv/bin/python -m bench.memory

Starts `manage.py serve` (SQLite in a temporary folder, Redis db 12, one CPU device), waits
until the web server answers and the device has registered, lets everything settle, then
reads the RSS of each process three times, a second apart, and reports the median. The
baseline, measured in the same run: a bare interpreter that imports torch (what each
process would cost if it imported torch). Targets: web < 250 MiB, an idle worker < 300 MiB;
torch only in job children.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
TARGETS_MIB = {"web": 250, "datasets worker": 300, "cpu0 worker": 300, "inference worker": 300}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def role(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    if "daphne" in cmd:
        return "web"
    if "workers.zygote" in cmd:
        return "zygote (cpu0's pre-imported job child)"
    if "manage.py serve" in cmd:
        return "serve (supervisor)"
    if "celery" in cmd:
        name = "datasets worker" if "datasets@" in cmd else "inference worker" if "inference@" in cmd else "cpu0 worker"
        parent = proc.parent()
        is_pool = parent is not None and "celery" in " ".join(parent.cmdline())
        return f"{name} pool" if is_pool else name
    if "redis-server" in cmd:
        return "redis (started by serve)"
    return cmd[:40]


def torch_baseline() -> float:
    out = subprocess.run(
        [sys.executable, "-c", "import torch, psutil; print(psutil.Process().memory_info().rss)"],
        capture_output=True, text=True, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    return int(out.stdout) / 2**20


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="digits-bench-mem-"))
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "digits_site.settings",
        "DIGITS_DATA_DIR": str(work / "data"),
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
        "DIGITS_CPU_DEVICES": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.pop("DATABASE_URL", None)
    log = (work / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert serve.poll() is None, (work / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=2)
                if "registered" in (work / "serve.log").read_text():
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("serve did not come up; see " + str(work / "serve.log"))
            time.sleep(0.5)
        time.sleep(5)  # let start-up garbage settle
        samples: dict[str, list[float]] = {}
        for _ in range(3):
            tree = [psutil.Process(serve.pid), *psutil.Process(serve.pid).children(recursive=True)]
            for proc in tree:
                try:
                    key = f"{role(proc)} [{proc.pid}]"
                    samples.setdefault(key, []).append(proc.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    continue
            time.sleep(1)
        torch_imported = []
        for proc in [psutil.Process(serve.pid), *psutil.Process(serve.pid).children(recursive=True)]:
            try:
                if any("torch/lib" in m.path for m in proc.memory_maps()):
                    torch_imported.append(role(proc))
            except (psutil.AccessDenied, psutil.NoSuchProcess):
                continue
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    baseline = torch_baseline()
    print(f"baseline: a bare interpreter that imports torch: {baseline:.0f} MiB\n")
    print(f"{'process':36} {'RSS MiB (median of 3)':>22} {'÷ baseline':>10} {'target':>8}")
    failed = False
    for key, values in sorted(samples.items()):
        rss = statistics.median(values)
        name = key.rsplit(" [", 1)[0]
        target = TARGETS_MIB.get(name)
        verdict = "" if target is None else (f"< {target} met" if rss < target else f"< {target} MISSED")
        failed |= target is not None and rss >= target
        print(f"{key:36} {rss:>22.0f} {rss / baseline:>10.2f} {verdict:>8}")
    print(f"\nprocesses with torch loaded at idle: {', '.join(torch_imported) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
