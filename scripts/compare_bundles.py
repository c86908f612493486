"""Pixel against latent from their evaluations: docs/LATENT.md's table.

    python scripts/compare_bundles.py --pixel docs/results.json --latent docs/latent/results.json \
        [--autoencoder docs/AUTOENCODER.md] [--out docs/LATENT.md]

Both evaluations judge with the same evaluator network against the same held-out images (the
latent bundle ships a copy of the pixel one's evaluator, and both draw the reference subset with
the same seed), so their Frechet distances are on one scale. Rows:

- each bundle at its own default, as its decision sweep measured it (1000 images on the cpu budget);
- at equal sampling time: the latent model at the setting of its step sweep whose seconds per
  image come closest to the pixel default's without exceeding them (the most it can do in the
  pixel default's time), from the wide sweeps.

The two samples come from different models, so nothing pairs them: the latent Frechet distance is
"no worse beyond the noise" when its interval's lower end is at most the pixel interval's upper end.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from guidescope.evaluation.defaults import choose_defaults  # noqa: E402
from guidescope.evaluation.measure import Measurement  # noqa: E402
from guidescope.evaluation.sweeps import Results  # noqa: E402

README_START, README_END = "<!-- latent:start -->", "<!-- latent:end -->"


def default_row(results: Results) -> Measurement | None:
    d = choose_defaults(results.measurements, results.info.reference_steps, results.decisions)
    return results.decided(d.setting)


def line(name: str, m: Measurement, note: str) -> str:
    low, high = m.interval("fidelity")
    fd_low, fd_high = m.interval("fd")
    return (f"| {name} | {m.setting.label()} | {m.images} | {m.scores.fidelity:.1%} [{low:.1%}, {high:.1%}] | "
            f"{m.scores.fd:.2f} [{fd_low:.2f}, {fd_high:.2f}] | {m.scores.precision:.3f} | {m.scores.recall:.3f} | "
            f"{1e3 * m.sample_seconds / m.images:.2f} | {note} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pixel", default="docs/results.json")
    p.add_argument("--latent", default="docs/latent/results.json")
    p.add_argument("--out", default="docs/LATENT.md")
    p.add_argument("--readme", help="also put the table between this README's latent markers")
    args = p.parse_args(argv)
    pixel, latent = Results.load(Path(args.pixel)), Results.load(Path(args.latent))
    pd, ld = default_row(pixel), default_row(latent)
    if pd is None or ld is None:
        print("error: both evaluations need a finished decision sweep", file=sys.stderr)
        return 2
    budget = pd.sample_seconds / pd.images
    same_steps = [m for m in latent.sweep("steps") if m.sample_seconds / m.images <= budget]
    equal = max(same_steps, key=lambda m: m.sample_seconds, default=None)
    latent_budget = ld.sample_seconds / ld.images
    pixel_in_latent_time = max((m for m in pixel.sweep("steps") if m.sample_seconds / m.images <= latent_budget),
                               key=lambda m: m.sample_seconds, default=None)
    fd_verdict = ("no worse beyond the noise" if ld.interval("fd")[0] <= pd.interval("fd")[1]
                  else "worse beyond the noise")
    rows = [line("pixel", pd, "its default (decision sweep)"), line("latent", ld, f"its default; Frechet distance "
                                                                    f"{fd_verdict} than pixel's")]
    if equal is not None:
        rows.append(line("latent", equal, "at equal sampling time: its step-sweep setting with the most time per "
                                          "image within the pixel default's (wide sweep)"))
    if pixel_in_latent_time is not None:
        rows.append(line("pixel", pixel_in_latent_time, "at equal sampling time: its step-sweep setting with the most "
                                                       "time per image within the latent default's (wide sweep)"))
    speed = (pd.sample_seconds / pd.images) / (ld.sample_seconds / ld.images)
    page = ["# Pixel and latent diffusion side by side", "",
            f"Written by `python scripts/compare_bundles.py {' '.join(sys.argv[1:] if argv is None else argv)}` from "
            f"two evaluations: pixel `{pixel.info.command}` ({pixel.info.budget} budget on {pixel.info.device}) and "
            f"latent `{latent.info.command}` ({latent.info.budget} budget on {latent.info.device}). Both judge with "
            "the same evaluator against the same held-out images, so the Frechet distances share one scale; "
            "± intervals are 95% bootstrap percentiles. Seconds per image are the evaluations' sampling times "
            "(batches of one class, no server); the two runs took place at different times, so the speed ratio "
            "is a guide, and docs/PERFORMANCE.md times both side by side. A Frechet distance's bootstrap "
            "interval can lie above its full-sample value: a resample repeats images, which narrows the fitted "
            "Gaussian, so compare intervals with intervals.", "",
            "| model | setting | images | fidelity | Frechet distance | precision | recall | ms per image | |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|", *rows, "",
            f"At their defaults the latent model samples {speed:.1f}x faster per image than the pixel model.", ""]
    Path(args.out).write_text("\n".join(page))
    print("\n".join(page))
    if args.readme:
        readme = Path(args.readme)
        text = readme.read_text()
        if README_START not in text or README_END not in text:
            print(f"error: {readme} has no {README_START} ... {README_END} section", file=sys.stderr)
            return 2
        head, rest = text.split(README_START, 1)
        section = ["Pixel and latent at their defaults and at equal sampling time, from their evaluations "
                   f"(written by `python scripts/compare_bundles.py`; details in [{Path(args.out).name}]({args.out})):", "",
                   *page[page.index(next(line for line in page if line.startswith("| model"))):]]
        readme.write_text(head + README_START + "\n" + "\n".join(section).rstrip() + "\n" + README_END
                          + rest.split(README_END, 1)[1])
        print(f"wrote the latent section of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
