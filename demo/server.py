"""`python app.py` in a child process on a free local port, for the tests and the scripts that
drive the real server (benchmark, screenshot)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

APP = Path(__file__).resolve().parent.parent / "app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(checkpoints: str | Path, threads: int = 1, timeout_s: float = 120.0,
                extra_args: tuple[str, ...] = (), log_path: str | Path | None = None) -> Iterator[str]:
    """Start app.py on 127.0.0.1 and a free port; yield its URL once it answers; stop it after.
    The app's output goes to log_path (default: a temporary file).
    Raises RuntimeError with the app's output if it exits or does not answer in timeout_s."""
    port = free_port()
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(APP), "--checkpoints", str(checkpoints), "--host", "127.0.0.1",
               "--port", str(port), "--threads", str(threads), *extra_args]
    process = subprocess.Popen(command, cwd=APP.parent, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"app.py did not start (exit {process.poll()}):\n{log.read().decode()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
