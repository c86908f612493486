"""How much streaming costs: the app through its real server against the bare sampler.

    python scripts/benchmark_app.py [--checkpoints DIR] [--mode generate|compare] [--threads N]

Starts `python app.py` on a free local port and calls its named endpoint with gradio_client,
timing from the call to the first frame (x_T) and to the last frame (the samples). The bare
sampler is the library's generator for the same settings (demo.runs.steps, the very call the
handler makes), iterated to the end in this process with the same torch thread count while the
server idles. Runs alternate, after one warm-up of each, and medians are printed. Targets: first
frame within 0.5 s, last frame within 1.2 x the bare sampler.

CPU seconds are printed too (the server process's for an app run, this process's for a bare
run): on a shared machine wall times swing with other load, while CPU time shows what streaming
itself costs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch
from gradio_client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo import runs, validate  # noqa: E402
from demo.server import running_app  # noqa: E402
from demo.settings import DEFAULTS, DISPLAY  # noqa: E402
from guidance.checkpoints import load_bundle  # noqa: E402

FIRST_FRAME_TARGET_S = 0.5
LAST_FRAME_TARGET_RATIO = 1.2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist")
    p.add_argument("--mode", choices=("generate", "compare"), default="generate")
    p.add_argument("--threads", type=int, default=2, help="torch threads, for the server and the bare sampler")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    p.add_argument("--images", type=int, default=DEFAULTS.num_images, help="images (per row for compare)")
    p.add_argument("--scale", type=float, default=DEFAULTS.scale)
    p.add_argument("--strengths", default=DEFAULTS.strengths, help="compare only")
    return p.parse_args(argv)


def request(args, class_name: str) -> tuple:
    """The endpoint's arguments, in its order (see demo/handlers.py)."""
    common = (args.steps, DEFAULTS.sampler, DEFAULTS.eta, args.images, DEFAULTS.seed)
    if args.mode == "generate":
        return (class_name, args.scale, DEFAULTS.unet, DEFAULTS.cfg_scale, *common)
    return (class_name, args.strengths, DEFAULTS.compare, args.scale, DEFAULTS.unet, DEFAULTS.cfg_scale, *common)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def time_bare(bundle, settings) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the bare sampler."""
    me, start, cpu = psutil.Process(), time.perf_counter(), cpu_seconds(psutil.Process())
    for _ in runs.steps(bundle, settings, "cpu"):
        pass
    return time.perf_counter() - start, cpu_seconds(me) - cpu


def time_app(client: Client, server: psutil.Process, args, endpoint_args: tuple) -> tuple[float, float, int, float]:
    """(seconds to the first frame, seconds to the last frame, frames received, server CPU seconds)."""
    cpu, start = cpu_seconds(server), time.perf_counter()
    job = client.submit(*endpoint_args, api_name=f"/{args.mode}")
    arrivals = [time.perf_counter() - start for _ in job]
    if "done" not in job.outputs()[-1][2]:
        raise RuntimeError(f"the run did not finish: {job.outputs()[-1][2]}")
    return arrivals[0], arrivals[-1], len(arrivals), cpu_seconds(server) - cpu


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.checkpoints, "cpu")
    class_name = bundle.class_names[DEFAULTS.class_index % len(bundle.class_names)]
    endpoint_args = request(args, class_name)
    build = validate.generate_settings if args.mode == "generate" else validate.compare_settings
    settings = build(*endpoint_args, class_names=bundle.class_names, num_timesteps=bundle.num_timesteps)
    print(f"{args.mode}: {len(settings.rows)} row(s) x {settings.images_per_row} images, {settings.steps} "
          f"{settings.sampler.upper()} steps, {args.threads} torch thread(s), checkpoints {args.checkpoints}")

    with running_app(args.checkpoints, threads=args.threads) as url:
        server = psutil.Process().children()[0]  # app.py, the only child
        # Frames arrive as messages naming their image files; a browser fetches those on its own
        # machine, while gradio_client's downloads would cost more CPU here than sampling does.
        client = Client(url, verbose=False, download_files=False)
        time_bare(bundle, settings)  # warm-up
        time_app(client, server, args, endpoint_args)
        bare, bare_cpu, first, last, frames, app_cpu = [], [], [], [], [], []
        for _ in range(args.repeats):
            wall, cpu = time_bare(bundle, settings)
            bare.append(wall)
            bare_cpu.append(cpu)
            f, l, n, cpu = time_app(client, server, args, endpoint_args)
            first.append(f)
            last.append(l)
            frames.append(n)
            app_cpu.append(cpu)

    bare_s, first_s, last_s = (statistics.median(v) for v in (bare, first, last))
    bare_cpu_s, app_cpu_s = statistics.median(bare_cpu), statistics.median(app_cpu)
    ratio = last_s / bare_s
    print(f"bare sampler          {bare_s:7.3f} s   (runs: {', '.join(f'{v:.3f}' for v in bare)})")
    print(f"click to first frame  {first_s:7.3f} s   (runs: {', '.join(f'{v:.3f}' for v in first)})  "
          f"target <= {FIRST_FRAME_TARGET_S} s: {'met' if first_s <= FIRST_FRAME_TARGET_S else 'MISSED'}")
    print(f"click to last frame   {last_s:7.3f} s   (runs: {', '.join(f'{v:.3f}' for v in last)})")
    print(f"last frame / bare     {ratio:7.3f}     target <= {LAST_FRAME_TARGET_RATIO}: "
          f"{'met' if ratio <= LAST_FRAME_TARGET_RATIO else 'MISSED'}")
    print(f"CPU seconds           {app_cpu_s:7.3f} s   app server per run, against {bare_cpu_s:.3f} s bare "
          f"({app_cpu_s / bare_cpu_s:.3f} x)")
    print(f"frames streamed       {statistics.median(frames):7.0f}     (x_T, then at most one per "
          f"{DISPLAY.frame_interval_s} s, then the samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
