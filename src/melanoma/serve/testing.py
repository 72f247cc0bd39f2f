"""Helpers to run the real service in a subprocess (tests, the browser test, bench/load.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_MODEL = Path(__file__).resolve().parents[3] / "models" / "default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_model(dst: Path, src: Path = REPO_MODEL) -> Path:
    """A writable copy of a model folder (model.json + model.safetensors), so tests never write into the repo."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("model.json", "model.safetensors"):
        if not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
    return dst


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServerProcess:
    """`melanoma serve ARGS` on 127.0.0.1:<free port>, waited for until /healthz answers; stopped on exit."""

    def __init__(self, *args: str, port: int | None = None, startup_s: float = 240, log: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args, self.startup_s, self.log = list(args), startup_s, log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "melanoma", "serve", "--host", "127.0.0.1", "--port",
                                      str(self.port), *self.args], stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"melanoma serve exited with status {self.proc.returncode} (log: {self.log})")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"melanoma serve did not answer within {self.startup_s:.0f} s (log: {self.log})")

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully (lifespan: workers, webhook)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
