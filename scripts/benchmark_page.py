"""The page as people use it, timed on the shipped models (a benchmark, not a test: its figures
depend on the machine, so it prints the load average beside them).

    python scripts/benchmark_page.py [--drag-seconds 6] [--move-ms 150] [--threads 2]

1. Live drag: Chromium (Debian's, through Playwright) opens the page on the latent model, ticks
   live mode and drags the w slider with the mouse, a move every --move-ms for --drag-seconds,
   sweeping back and forth. It counts the sample images the page shows change while the hand
   moves (a MutationObserver on the x_t image), and checks that the page ends on the w the hand
   ended on. Target (issue 25): at least 2 updates a second at the latent defaults.
2. Fair serving: one client sends the largest pixel Generate the server accepts (16 images at the
   most steps within Limits.max_seconds, read from the server's own refusal of more); 3 s later a
   second client sends a latent Generate at its defaults. The second one's wait must stay within
   that bound (plus its own run).
"""
from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from pathlib import Path

from gradio_client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo.settings import LIMITS, SHIPPED_CHECKPOINTS, SHIPPED_LATENT, app_defaults  # noqa: E402
from scripts.launcher import running_app  # noqa: E402
from scripts.machine import load_average, load_line  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
UPDATES_PER_SECOND = 2.0  # the live target
# Counts changes of the x_t image and keeps the status texts, from the moment it is installed.
WATCH = """() => {
  window.__updates = []; window.__status = [];
  const box = document.querySelector('#generate-xt');
  new MutationObserver(() => {
    const img = box.querySelector('img');
    const src = img && img.getAttribute('src');
    if (src && src !== window.__last) { window.__last = src; window.__updates.push(performance.now()); }
  }).observe(box, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  const status = document.querySelector('#generate-status');
  new MutationObserver(() => window.__status.push(status.innerText)).observe(status,
      {subtree: true, childList: true, characterData: true});
}"""


def live_drag(url: str, seconds: float, move_ms: float) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("#model").get_by_label("latent space: z_t").check()
        page.locator("#info", has_text="samples latent z_t").wait_for()
        page.locator("#generate-live input[type=checkbox]").check()
        track = page.locator("#scale input[type=range]").bounding_box()
        y, left, width = track["y"] + track["height"] / 2, track["x"], track["width"]
        page.evaluate(WATCH)
        page.mouse.move(left + 0.1 * width, y)
        page.mouse.down()
        start, moves, fraction = time.monotonic(), 0, 0.1
        while time.monotonic() - start < seconds:
            moves += 1
            fraction = 0.1 + 0.5 * abs(((moves * 0.03) % 2) - 1)  # back and forth over w in [3, 18]
            page.mouse.move(left + fraction * width, y)
            page.wait_for_timeout(move_ms)
        dragged = time.monotonic() - start
        updates_while_dragging = page.evaluate("window.__updates.length")
        page.mouse.up()
        final_w = float(page.locator("#scale input[type=number]").input_value())
        deadline = time.monotonic() + 30
        while f"w={final_w:g} " not in page.locator("#generate-status").inner_text() + " ":
            if time.monotonic() > deadline:
                break
            page.wait_for_timeout(100)
        page.wait_for_timeout(1000)  # anything still on its way arrives now
        status = page.locator("#generate-status").inner_text()
        browser.close()
    return {"moves": moves, "dragged_s": dragged, "updates": updates_while_dragging, "final_w": final_w,
            "ends_on_last": f"w={final_w:g} " in status + " " and "done" in status, "status": status.split(" · ")[:3]}


def most_steps(client: Client, settings: dict) -> int:
    """The most steps the server accepts for settings: from its refusal of the most that the app's
    hard cap on images x steps allows (that many when it is not refused)."""
    steps = LIMITS.max_image_steps // settings["num_images"]
    try:
        client.predict(**{**settings, "steps": steps}, api_name="/generate")
    except Exception as err:  # gradio_client raises AppError with the server's message
        found = re.search(r"use at most (\d+) steps", str(err))
        if found:
            return int(found[1])
        raise
    return steps


def fair_serving(url: str) -> dict:
    pixel, latent = app_defaults(SHIPPED_CHECKPOINTS), app_defaults(SHIPPED_LATENT)
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    big = {**vars(pixel.settings(names)), "num_images": LIMITS.max_images_per_row, "model": "pixel"}
    small = {**vars(latent.settings(names)), "model": "latent"}
    big["steps"] = most_steps(Client(url, verbose=False), big)
    times = {}

    def send(name: str, arguments: dict) -> None:
        start = time.monotonic()
        Client(url, verbose=False).predict(**arguments, api_name="/generate")  # raises if the server refuses
        times[name] = (start, time.monotonic())

    first = threading.Thread(target=send, args=("big", big))
    first.start()
    time.sleep(3.0)
    send("small", small)
    first.join()
    return {"big_steps": big["steps"], "big_s": times["big"][1] - times["big"][0],
            "small_s": times["small"][1] - times["small"][0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drag-seconds", type=float, default=6.0)
    parser.add_argument("--move-ms", type=float, default=150.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    args = parser.parse_args(argv)
    print(load_line(load_average()))
    with running_app([SHIPPED_LATENT, SHIPPED_CHECKPOINTS], threads=args.threads, extra_args=("--live", "on")) as url:
        drag = live_drag(url, args.drag_seconds, args.move_ms)
        rate = drag["updates"] / drag["dragged_s"]
        print(f"live drag, latent model at its defaults: {drag['moves']} moves in {drag['dragged_s']:.1f} s "
              f"(one each {args.move_ms:g} ms), {drag['updates']} image updates while dragging: {rate:.2f} a second "
              f"(target >= {UPDATES_PER_SECOND:g}: {'met' if rate >= UPDATES_PER_SECOND else 'MISSED'}); "
              f"ends on the last value w={drag['final_w']:g}: {'yes' if drag['ends_on_last'] else 'NO'} "
              f"({' · '.join(drag['status'])})")
        fair = fair_serving(url)
        bound = LIMITS.max_seconds
        print(f"fair serving: the largest pixel Generate accepted (16 images x {fair['big_steps']} steps) took "
              f"{fair['big_s']:.1f} s; a latent Generate sent 3 s after it by another client finished "
              f"{fair['small_s']:.1f} s after it was sent (bound {bound:g} s per request: "
              f"{'met' if fair['small_s'] <= bound else 'MISSED'})")
    print(load_line(load_average(), "end"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
