"""`python app.py` in a child process on a free local port, for the tests and the scripts that
drive the real server (benchmark, screenshot, load test, the Space build check)."""
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

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_environment(app_dir: str | Path) -> dict[str, str]:
    """This process's environment for an app in app_dir, quiet and unbuffered. An app outside the
    repository gets no PYTHONPATH entry that leads back into it, so it runs on its own files, and
    writes no bytecode beside them."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    if Path(app_dir).resolve() == REPO:
        return env
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if "PYTHONPATH" in env:
        kept = [entry for entry in env["PYTHONPATH"].split(os.pathsep)
                if entry and not Path(entry).resolve().is_relative_to(REPO)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env


@contextlib.contextmanager
def running_app(checkpoints: str | Path | list | tuple | None, threads: int = 1, timeout_s: float = 120.0,
                extra_args: tuple[str, ...] = (), log_path: str | Path | None = None,
                app_dir: str | Path = REPO) -> Iterator[str]:
    """Start app_dir/app.py, with app_dir as its working folder, on 127.0.0.1 and a free port;
    yield its URL once it answers; stop it after.

    checkpoints: passed as --checkpoints, once per folder of a list (relative paths resolve
    against app_dir); None leaves the app's default. The app's output goes to log_path (default: a temporary file).
    Raises RuntimeError with the app's output if it exits or does not answer in timeout_s."""
    folders = [] if checkpoints is None else list(checkpoints) if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    arguments = ["--threads", str(threads), *(arg for folder in folders for arg in ("--checkpoints", str(folder))),
                 *extra_args]
    with running_server("app.py", arguments, timeout_s, log_path, app_dir) as url:
        yield url


@contextlib.contextmanager
def running_server(script: str, arguments: list[str], timeout_s: float = 120.0, log_path: str | Path | None = None,
                   app_dir: str | Path = REPO) -> Iterator[str]:
    """`python SCRIPT --host 127.0.0.1 --port PORT ARGUMENTS` in app_dir, on a free port: yield its
    URL once it answers, stop it after (see running_app)."""
    app_dir = Path(app_dir).resolve()
    port = free_port()
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    command = [sys.executable, script, "--host", "127.0.0.1", "--port", str(port), *arguments]
    process = subprocess.Popen(command, cwd=app_dir, stdout=log, stderr=subprocess.STDOUT,
                               env=child_environment(app_dir))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{script} in {app_dir} did not start (exit {process.poll()}):\n"
                                   f"{log.read().decode(errors='replace')[-3000:]}")
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
