"""Load and cancellation against the real server (`python app.py` on tiny checkpoints): eight
gradio_client clients at once each get the bytes of the same request run alone; Stop and a client
that goes away end the run within one step, and an API cancel ends it too, each followed by a
normal run; the queue turns callers away beyond its maximum size; and 100 runs leave the server's
memory within 100 MB of where it started.

"Within one step" is read from the server's own log: every run ends with one line such as
`run 1a2b3c4d: stopped after step 13 of 1000; Stop came after step 12`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from gradio_client import Client

from app_fixtures import UNBOUNDED, Server, checkpoint_dir, fetch_file  # noqa: F401
from demo.settings import SERVER
from scripts.launcher import running_app

SMALL = ("Sneaker", 3.0, "unconditional", 0.0, 8, "ddpm", 0.0, 2)  # + seed; DDPM: fresh noise every step
TINY = ("Bag", 1.0, "unconditional", 0.0, 2, "ddim", 0.0, 1)       # + seed
LONG = ("Trouser", 1.0, "unconditional", 0.0, 1000, "ddim", 0.0, 4)  # + seed; ended long before its end
MEMORY_RUNS, MEMORY_LIMIT_MB = 100, 100


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory) -> Server:
    """The app with its default frame interval, as served."""
    log = tmp_path_factory.mktemp("server") / "app.log"
    with running_app(checkpoint_dir, threads=1, extra_args=UNBOUNDED, log_path=log) as url:
        yield Server(url, log)


@pytest.fixture(scope="module")
def server_process(server) -> psutil.Process:
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    app = [p for p in psutil.Process().children(recursive=True)
           if "app.py" in " ".join(p.cmdline()) and port in p.cmdline()]
    assert len(app) == 1
    return app[0]


def connect(server: Server) -> Client:
    # Plain http on loopback: ssl_verify=False only spares httpx loading the CA bundle per request.
    return Client(server.url, verbose=False, download_files=False, ssl_verify=False)


def image_bytes(outputs: tuple) -> tuple[bytes, bytes, bytes]:
    """The PNG files of the last x_t, x-hat_0 and push grids, as served."""
    return fetch_file(outputs[0]), fetch_file(outputs[1]), fetch_file(outputs[5])


def wait_for_frames(job, count: int = 2, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while len(job.outputs()) < count:
        assert time.monotonic() < deadline, "the run streamed no frames"
        time.sleep(0.02)


def press_stop(server: Server, session: str) -> None:
    """What the page's Stop button sends: the generate tab's stop event, for this session."""
    with urllib.request.urlopen(f"{server.url}config", timeout=10) as response:
        config = json.loads(response.read())
    button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "generate-stop")
    stop = next(d for d in config["dependencies"] if [button, "click"] in d["targets"] and d["backend_fn"])
    body = json.dumps({"fn_index": stop["id"], "trigger_id": button, "data": [], "event_data": None,
                       "session_hash": session}).encode()
    request = urllib.request.Request(f"{server.url}gradio_api/run/predict", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def assert_serves_normally(server: Server) -> None:
    outputs = connect(server).predict(*TINY, 0, api_name="/generate")
    assert "done" in outputs[2] and "step 2 of 2" in outputs[2]


def test_eight_clients_at_once_each_get_the_bytes_of_the_request_run_alone(server):
    seeds = [5, 6] * 4
    alone = {seed: image_bytes(connect(server).predict(*SMALL, seed, api_name="/generate")) for seed in set(seeds)}
    assert alone[5] != alone[6]  # so equal bytes below mean the same request, not a constant image
    clients = [connect(server) for _ in seeds]
    start = threading.Barrier(len(clients))

    def call(client: Client, seed: int) -> tuple:
        start.wait(timeout=30)
        return client.predict(*SMALL, seed, api_name="/generate")

    with ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(call, clients, seeds))
    assert all("done" in outputs[2] for outputs in results)
    assert [image_bytes(outputs) == alone[seed] for outputs, seed in zip(results, seeds)] == [True] * len(seeds)


def test_stop_ends_the_run_within_one_step_and_the_next_runs_normally(server):
    client = connect(server)
    job = client.submit(*LONG, 1, api_name="/generate")
    wait_for_frames(job)
    press_stop(server, client.session_hash)
    assert "stopped" in job.result(timeout=60)[2]
    end = server.wait_for_end(client.session_hash)
    assert end.state == "stopped" and end.steps_done < end.steps
    assert end.stop_came is not None and end.steps_done - end.stop_came <= 1
    assert_serves_normally(server)


CLIENT_THAT_GOES_AWAY = """
import sys, time
from gradio_client import Client
client = Client(sys.argv[1], verbose=False, download_files=False, ssl_verify=False)
job = client.submit(*{long}, 2, api_name="/generate")
while len(job.outputs()) < 2:
    time.sleep(0.02)
print(client.session_hash, flush=True)
time.sleep(120)
"""


def test_a_client_that_goes_away_ends_its_run_within_one_step(server):
    code = CLIENT_THAT_GOES_AWAY.format(long=LONG)
    process = subprocess.Popen([sys.executable, "-c", code, server.url], stdout=subprocess.PIPE, text=True)
    try:
        session = process.stdout.readline().strip()  # printed once its run is streaming
    finally:
        process.kill()  # no goodbye: its connections simply drop
        process.wait(timeout=10)
    assert session, "the client did not start its run"
    end = server.wait_for_end(session)
    assert end.state == "stopped" and end.steps_done < end.steps
    assert end.stop_came is not None and end.steps_done - end.stop_came <= 1
    assert_serves_normally(server)


def test_cancel_through_the_api_ends_the_run_and_the_next_runs_normally(server):
    """gradio_client's cancel reaches Gradio only, which closes the run at its next streamed frame
    (at most Display.frame_interval_s later), not after its current step."""
    client = connect(server)
    job = client.submit(*LONG, 3, api_name="/generate")
    wait_for_frames(job)
    job.cancel()
    end = server.wait_for_end(client.session_hash)
    assert end.state == "closed" and end.steps_done < end.steps
    assert not any("done" in outputs[2] for outputs in job.outputs())
    assert_serves_normally(server)


def test_the_queue_turns_callers_away_beyond_its_maximum_size(server):
    """One run holds the only sampling slot; max_queue more wait; the rest are refused at once."""
    holder = connect(server)
    job = holder.submit(*LONG, 4, api_name="/generate")
    wait_for_frames(job)
    client = connect(server)
    waiting = [client.submit(*TINY, seed, api_name="/generate") for seed in range(SERVER.max_queue + 2)]
    deadline = time.monotonic() + 30
    while sum(w.done() for w in waiting) < 2:
        assert time.monotonic() < deadline, "no caller was turned away"
        time.sleep(0.05)
    refused = [w for w in waiting if w.done()]
    assert len(refused) == 2  # the concurrency limit holds the other max_queue back while the slot is taken
    for w in refused:
        with pytest.raises(Exception, match="[Qq]ueue is full"):
            w.result()
    press_stop(server, holder.session_hash)
    accepted = [w.result(timeout=60) for w in waiting if w not in refused]
    assert len(accepted) == SERVER.max_queue and all("done" in outputs[2] for outputs in accepted)
    assert server.wait_for_end(holder.session_hash).state == "stopped"


def test_a_hundred_runs_leave_the_memory_within_100_mb(server, server_process):
    """Tiny runs from four sessions, one in ten stopped mid-run; resident memory of the server
    process after a warm-up against after the hundred."""
    clients = [connect(server) for _ in range(4)]

    def runs(first: int, count: int) -> None:
        """Runs first .. first + count - 1, one per client at a time; run k is stopped if k % 10 == 9."""
        for k in range(first, first + count, len(clients)):
            seeds = range(k, min(k + len(clients), first + count))
            batch = [(client, seed % 10 == 9, client.submit(*(LONG if seed % 10 == 9 else TINY), seed,
                                                            api_name="/generate"))
                     for client, seed in zip(clients, seeds)]
            for client, stopped, job in batch:
                if stopped:  # before waiting for the others, which may queue behind it
                    wait_for_frames(job)
                    press_stop(server, client.session_hash)
            for client, stopped, job in batch:
                assert ("stopped" if stopped else "done") in job.result(timeout=60)[2]

    runs(0, 10)  # warm-up: caches, thread pools, allocator arenas
    before = server_process.memory_info().rss
    runs(10, MEMORY_RUNS)
    grown_mb = (server_process.memory_info().rss - before) / 2**20
    assert grown_mb < MEMORY_LIMIT_MB, f"the server grew by {grown_mb:.0f} MB over {MEMORY_RUNS} runs"
    assert server_process.is_running()

