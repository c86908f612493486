"""docs/screenshot.png and docs/screenshot-narrow.png: the app on the shipped checkpoints, after a
run in headless Chromium, on a desktop (1400 px wide, the whole page) and on a phone (420 px, the
first screen).

    python scripts/screenshot.py [--checkpoints DIR ...] [--model NAME] [--tab compare|generate]
                                 [--mode MODE] [--out docs/screenshot.png] [--narrow-out docs/screenshot-narrow.png]

Starts `python app.py` on a free local port (by default on the shipped models, as `python app.py`
does), opens it in Debian's Chromium (/usr/bin/chromium) through Playwright, picks --model when
given, presses Generate or Compare with that model's default settings (Compare: in --mode, as the page
picks it), waits for the run to finish and saves the screenshot; then the same at the narrow width
with Generate ("" skips it). docs/screenshot-guides.png is
`--model latent --mode evaluated --out docs/screenshot-guides.png --narrow-out ""`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo.arguments import COMPARE_MODES  # noqa: E402
from scripts.launcher import running_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
DESKTOP, NARROW = {"width": 1400, "height": 1000}, {"width": 420, "height": 900}


def shoot(browser, url: str, args, tab: str, viewport: dict, out: str, full_page: bool) -> None:
    """Open the page at viewport, run `tab` at the model's defaults, save the screenshot to out."""
    page = browser.new_page(viewport=viewport, device_scale_factor=1)
    page.goto(url)
    if args.model:
        page.locator("#model").locator(f"input[value='{args.model}']").check()
        page.wait_for_timeout(1000)  # the controls take the model's defaults
    page.get_by_role("tab", name=tab.capitalize()).click()
    if tab == "compare" and args.mode:
        page.locator("#compare-mode").locator(f"input[value='{args.mode}']").check()
        page.wait_for_timeout(1000)  # the mode's rows, and what it sets, are in place
    page.locator(f"#{tab}-button").click()
    # The status line says "done" once the last frame has arrived; downloads appear after.
    status = page.locator(f"#{tab}-status [data-testid=markdown]")
    status.get_by_text("done").wait_for(timeout=args.timeout_s * 1000)
    page.get_by_role("button", name="Download denoising (GIF)").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)  # let the charts finish drawing
    if not full_page:
        page.evaluate("window.scrollTo(0, 0)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=out, full_page=full_page)
    page.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", action="append", default=None, help="as app.py's (default: the shipped ones)")
    p.add_argument("--model", default=None, help="the model to pick on the page (default: the one it opens on)")
    p.add_argument("--tab", choices=("compare", "generate"), default="compare")
    p.add_argument("--mode", choices=COMPARE_MODES, default=None, help="the Compare mode to pick (default: the page's)")
    p.add_argument("--out", default="docs/screenshot.png")
    p.add_argument("--narrow-out", default="docs/screenshot-narrow.png", help='the phone-width one ("" skips it)')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout-s", type=float, default=600, help="longest wait for the run to finish")
    args = p.parse_args(argv)

    with running_app(args.checkpoints, threads=args.threads) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        shoot(browser, url, args, args.tab, DESKTOP, args.out, full_page=True)
        if args.narrow_out:
            shoot(browser, url, args, "generate", NARROW, args.narrow_out, full_page=False)
        browser.close()
    print(f"wrote {args.out}" + (f" and {args.narrow_out}" if args.narrow_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
