"""What a user waits for: click to first and last frame through the real server, at the app's
defaults against the earlier path (DDIM 25 steps on eager torch), side by side in one run.

    python scripts/benchmark_app.py [--checkpoints DIR] [--threads 2] [--repeats 3]

Starts two `python app.py` servers on free local ports: one as shipped (`--backend auto`, which
runs the UNet in ONNX Runtime where it loads) and one with `--backend torch`. Each request goes to
both, strictly one at a time (never two runs at once), the two alternating: the new path at the
defaults of the checkpoint folder (defaults.json: sampler, steps, w), the earlier one at DDIM
25 steps. Requests, each at the default class and seed:

    generate       the defaults: 8 images
    generate 16    16 images
    compare        5 strengths (0, 1, 2, 4, 8) x 8 images, classifier guidance
    vs free        classifier vs classifier-free, 5 strengths x 8 images (10 rows)

The time to the last frame is from the call to the final frame (the samples) arriving through
gradio_client, which downloads no files (a browser fetches frames on its own machine). Medians of
--repeats runs after one warm-up each. The 1-minute load average is printed first; figures taken
beside other work are not figures (scripts/performance.sh refuses to write them above 0.5).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from gradio_client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo.settings import AppDefaults, app_defaults  # noqa: E402
from guidescope.bundle import load_bundle  # noqa: E402
from scripts.launcher import running_app  # noqa: E402
from scripts.machine import load_average, load_line  # noqa: E402

EARLIER = {"sampler": "ddim", "steps": 25}   # the app's path before the fast solver and the runtime
STRENGTHS = "0, 1, 2, 4, 8"
TARGETS_S = {"generate": 0.6, "generate 16": 1.0, "compare": 1.5, "vs free": 3.0}


def requests(defaults: AppDefaults, class_name: str, sampler: str, steps: int) -> dict[str, tuple[str, dict]]:
    """name -> (endpoint, its arguments by name)."""
    settings = replace(defaults.settings((class_name,)), class_name=class_name, sampler=sampler, steps=steps)

    def generate(images):
        return "/generate", asdict(replace(settings, num_images=images))

    def compare(mode):
        return "/compare", {**asdict(replace(settings, cfg_scale=0.0, num_images=8)), "strengths": STRENGTHS,
                            "mode": mode}

    return {"generate": generate(defaults.num_images), "generate 16": generate(16),
            "compare": compare("classifier"), "vs free": compare("classifier-vs-free")}


def time_call(client: Client, endpoint: str, arguments: dict) -> tuple[float, float, int]:
    """(seconds to the first frame, seconds to the last frame, frames received) of one run."""
    start = time.perf_counter()
    job = client.submit(**arguments, api_name=endpoint)
    arrivals = [time.perf_counter() - start for _ in job]
    status = job.outputs()[-1][2]
    if "done" not in status:
        raise RuntimeError(f"{endpoint} did not finish: {status}")
    return arrivals[0], arrivals[-1], len(arrivals)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    load = load_average()
    defaults = app_defaults(args.checkpoints)
    bundle = load_bundle(args.checkpoints)
    class_name = defaults.class_name(bundle.class_names)
    paths = {"now": requests(defaults, class_name, defaults.sampler, defaults.steps),
             "earlier": requests(defaults, class_name, EARLIER["sampler"], EARLIER["steps"])}
    print(load_line(load))
    print(f"{os.cpu_count()} CPU cores, {args.threads} torch threads per server, checkpoints {args.checkpoints}, "
          f"class {class_name}, w = {defaults.scale:g}, medians of {args.repeats} after a warm-up")
    print(f"now: {defaults.sampler} {defaults.steps} steps, --backend auto; "
          f"earlier: {EARLIER['sampler']} {EARLIER['steps']} steps, --backend torch")
    unbounded = ("--max-seconds", "600")  # what the runs take, not where the page's bound cuts them
    with running_app(args.checkpoints, threads=args.threads, extra_args=("--backend", "auto", *unbounded)) as now_url, \
            running_app(args.checkpoints, threads=args.threads, extra_args=("--backend", "torch", *unbounded)) as earlier_url:
        clients = {"now": Client(now_url, verbose=False, download_files=False),
                   "earlier": Client(earlier_url, verbose=False, download_files=False)}
        times = {(path, name): [] for path in paths for name in paths[path]}
        for name in paths["now"]:
            for path in paths:  # warm-up: the first call of each kind allocates
                time_call(clients[path], *paths[path][name])
        for repeat in range(args.repeats):
            for name in paths["now"]:
                for path in paths:
                    times[path, name].append(time_call(clients[path], *paths[path][name]))
                    print(f"  run {repeat + 1}, {name}, {path}: last frame after {times[path, name][-1][1]:.3f} s",
                          file=sys.stderr, flush=True)
    print(f"{'request':<12} {'images':>6}  {'first frame':>11}  {'last frame':>10}  {'earlier last':>12}  "
          f"{'speed-up':>8}  {'target':>8}  frames")
    for name, (endpoint, arguments) in paths["now"].items():
        first = statistics.median(t[0] for t in times["now", name])
        last = statistics.median(t[1] for t in times["now", name])
        earlier = statistics.median(t[1] for t in times["earlier", name])
        rows = 1 if endpoint == "/generate" else 2 * len(STRENGTHS.split(",")) if "vs" in arguments["mode"] else \
            len(STRENGTHS.split(","))
        images = arguments["num_images"] * rows
        target = TARGETS_S[name]
        print(f"{name:<12} {images:>6}  {first:>9.3f} s  {last:>8.3f} s  {earlier:>10.3f} s  {earlier / last:>7.2f}x  "
              f"{'<= ' + format(target, 'g') + ' s':>8} {'met' if last <= target else 'MISSED':>6}  "
              f"{statistics.median(t[2] for t in times['now', name]):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
