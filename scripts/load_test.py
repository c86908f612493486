"""Throughput and latency of the real server under 1, 4 and 8 concurrent clients, and the growth of
its memory over 100 runs.

    python scripts/load_test.py [--checkpoints checkpoints/fashion-mnist] [--write-docs]

Starts `python app.py` on a free 127.0.0.1 port (scripts/launcher.py; nothing leaves the
machine) and calls its /generate endpoint through gradio_client. At each concurrency level, that
many clients each send --requests requests back to back (every request its own seed); latency runs
from the call to the last frame, throughput is requests finished per second of the level's wall
time. Then --memory-runs small runs from four clients, with the resident memory of the server
process read (psutil) after a warm-up and after the runs. Every loop is bounded: a fixed number of
requests, each with a timeout, and --max-minutes in all. --write-docs also writes the figures to
docs/LOAD.md, with the command that produced them.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import gradio
import psutil
from gradio_client import Client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from demo.settings import DEFAULTS, SERVER  # noqa: E402
from guidescope.checkpoints import read_config  # noqa: E402
from scripts.launcher import running_app  # noqa: E402

DOCS = REPO / "docs" / "LOAD.md"
WARM_UP_RUNS = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the server (default: the CPU count, as app.py uses for one run at a time)")
    p.add_argument("--clients", default="1,4,8", help="concurrency levels, comma-separated (default 1,4,8)")
    p.add_argument("--requests", type=int, default=4, help="requests per client at each level (default 4)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps per request (default 10)")
    p.add_argument("--images", type=int, default=2, help="images per request (default 2)")
    p.add_argument("--memory-runs", type=int, default=100, help="runs of 1 image x 2 steps for the memory figure")
    p.add_argument("--timeout-s", type=float, default=300, help="the longest one request may take")
    p.add_argument("--max-minutes", type=float, default=20, help="stop with an error past this")
    p.add_argument("--write-docs", action="store_true", help=f"also write {DOCS.relative_to(REPO)}")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.clients.split(",")]
    if min(args.levels) < 1 or args.requests < 1 or args.memory_runs < 1 or max(args.levels) > SERVER.max_queue:
        p.error(f"--clients from 1 to {SERVER.max_queue} (the queue's size), --requests and --memory-runs >= 1")
    return args


class Level(NamedTuple):
    clients: int
    requests: int
    wall_s: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.wall_s

    def percentile(self, q: int) -> float:
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


class Memory(NamedTuple):
    runs: int
    before_mb: float
    after_mb: float


def connect(url: str) -> Client:
    # Plain http on loopback: ssl_verify=False only spares httpx loading the CA bundle per request.
    return Client(url, verbose=False, download_files=False, ssl_verify=False)


def request(class_name: str, steps: int, images: int, seed: int) -> tuple:
    """The /generate arguments, in the endpoint's order (see demo/handlers.py)."""
    return (class_name, DEFAULTS.scale, DEFAULTS.unet, DEFAULTS.cfg_scale, steps, "ddim", 0.0, images, seed)


def timed_call(client: Client, arguments: tuple, timeout_s: float) -> float:
    start = time.perf_counter()
    outputs = client.submit(*arguments, api_name="/generate").result(timeout=timeout_s)
    if "done" not in outputs[2]:
        raise RuntimeError(f"a run did not finish: {outputs[2]}")
    return time.perf_counter() - start


def run_level(url: str, clients: int, args, class_name: str, deadline: float) -> Level:
    """clients clients at once, each sending args.requests requests back to back."""
    connected = [connect(url) for _ in range(clients)]

    def client_loop(k: int) -> list[float]:
        latencies = []
        for r in range(args.requests):
            if time.monotonic() > deadline:
                raise TimeoutError("--max-minutes passed")
            seed = 1000 * clients + args.requests * k + r
            latencies.append(timed_call(connected[k], request(class_name, args.steps, args.images, seed),
                                        args.timeout_s))
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        per_client = list(pool.map(client_loop, range(clients)))
    wall = time.perf_counter() - start
    latencies = [latency for client in per_client for latency in client]
    return Level(clients, len(latencies), wall, latencies)


def server_process(url: str) -> psutil.Process:
    port = url.rstrip("/").rsplit(":", 1)[1]
    found = [p for p in psutil.Process().children(recursive=True)
             if "app.py" in " ".join(p.cmdline()) and port in p.cmdline()]
    if len(found) != 1:
        raise RuntimeError(f"expected one app.py child process on port {port}, found {len(found)}")
    return found[0]


def measure_memory(url: str, runs: int, class_name: str, timeout_s: float, deadline: float) -> Memory:
    """RSS of the server after WARM_UP_RUNS runs and after `runs` more (1 image x 2 steps each)."""
    process = server_process(url)
    clients = [connect(url) for _ in range(4)]

    def batch(first: int, count: int) -> None:
        for k in range(first, first + count, len(clients)):
            if time.monotonic() > deadline:
                raise TimeoutError("--max-minutes passed")
            seeds = range(k, min(k + len(clients), first + count))
            jobs = [c.submit(*request(class_name, 2, 1, seed), api_name="/generate") for c, seed in zip(clients, seeds)]
            for job in jobs:
                job.result(timeout=timeout_s)

    batch(0, WARM_UP_RUNS)
    before = process.memory_info().rss / 2**20
    batch(WARM_UP_RUNS, runs)
    return Memory(runs, before, process.memory_info().rss / 2**20)


def report(args, class_name: str, levels: list[Level], memory: Memory, load: float) -> str:
    """The figures as Markdown; load is the machine's 1-minute load average at the start."""
    command = "python scripts/load_test.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Load",
        "",
        f"Written by `{command.strip()}`: `python app.py` on {args.checkpoints} with {args.threads} torch "
        f"thread(s), on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), gradio "
        f"{gradio.__version__}, all traffic on 127.0.0.1; the 1-minute load average was {load:.1f} when it "
        f"started. The server runs {SERVER.concurrency_limit} sampling run(s) at a time and queues up to "
        f"{SERVER.max_queue} more.",
        "",
        f"Each request: /generate, class {class_name}, w = {DEFAULTS.scale:g}, {args.steps} DDIM steps, "
        f"{args.images} image(s). Every client sends {args.requests} requests back to back; latency is from "
        "the call to the last frame.",
        "",
        "| concurrent clients | requests | throughput (requests/s) | p50 latency (s) | p95 latency (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {lv.clients} | {lv.requests} | {lv.throughput:.2f} | {lv.percentile(50):.2f} | "
              f"{lv.percentile(95):.2f} |" for lv in levels]
    lines += [
        "",
        f"Memory: the server process's resident memory was {memory.before_mb:.0f} MB after {WARM_UP_RUNS} "
        f"warm-up runs and {memory.after_mb:.0f} MB after {memory.runs} more (1 image x 2 steps each, from four "
        f"clients): growth {memory.after_mb - memory.before_mb:+.1f} MB.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + 60 * args.max_minutes
    load = os.getloadavg()[0]  # other work on the machine slows every figure below
    names = read_config(args.checkpoints, "unet").get("class_names") or ["0"]
    class_name = names[DEFAULTS.class_index % len(names)]
    print(f"load test: {args.checkpoints}, {args.threads} torch thread(s), clients {args.levels}, "
          f"{args.requests} request(s) each of {args.images} image(s) x {args.steps} steps")
    with running_app(args.checkpoints, threads=args.threads) as url:
        timed_call(connect(url), request(class_name, args.steps, args.images, 0), args.timeout_s)  # warm-up
        levels = []
        for clients in args.levels:
            levels.append(run_level(url, clients, args, class_name, deadline))
            lv = levels[-1]
            print(f"{clients} client(s): {lv.requests} requests in {lv.wall_s:.1f} s, {lv.throughput:.2f} req/s, "
                  f"p50 {lv.percentile(50):.2f} s, p95 {lv.percentile(95):.2f} s")
        memory = measure_memory(url, args.memory_runs, class_name, args.timeout_s, deadline)
        print(f"memory: {memory.before_mb:.0f} MB -> {memory.after_mb:.0f} MB over {memory.runs} runs "
              f"({memory.after_mb - memory.before_mb:+.1f} MB)")
    text = report(args, class_name, levels, memory, load)
    print("\n" + text)
    if args.write_docs:
        DOCS.write_text(text)
        print(f"wrote {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
