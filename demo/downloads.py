"""The files a run offers for download, in one folder that stays bounded: the animated GIF of the
denoising and, for a finished run, the PNG of the samples with the parameters in a text chunk."""
from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path

from . import render
from .runs import Frame, Recording
from .settings import DISPLAY, Display

KEPT_DOWNLOADS = 64  # files kept in the downloads folder; older ones are deleted


class Downloads:
    """The downloads folder, holding the newest KEPT_DOWNLOADS files; a file's name says the class
    and the seed, and a digest of the run's parameters. Unless a folder is given, a temporary one
    is made at the first download and removed when the process ends, so an app (or a test) that
    offers no download leaves nothing behind."""

    def __init__(self, folder: str | Path | None = None, display: Display = DISPLAY):
        self._folder = None if folder is None else Path(folder)
        self.display = display

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="guidescope-downloads-"))
            atexit.register(shutil.rmtree, self._folder, ignore_errors=True)
        self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder

    def save(self, recording: Recording, frames: list[Frame]) -> tuple[Path, Path | None]:
        """The GIF of frames and, when the run finished, the PNG of its samples (else None); then
        the oldest files past KEPT_DOWNLOADS are deleted."""
        stem = self._stem(recording)
        gif = render.save_gif(recording, self.folder / f"{stem}.gif", self.display, frames)
        png = None
        if recording.state == "finished":
            samples = render.grid(recording.images(frames[-1]), recording.run, self.display, self.display.png_upscale,
                                  labels=True)
            png = render.save_png(samples, recording.run.parameters(), self.folder / f"{stem}.png")
        self._prune()
        return gif, png

    def _stem(self, recording: Recording) -> str:
        run = recording.run
        digest = hashlib.sha256(f"{run.parameters()}|{len(recording.frames)}".encode()).hexdigest()[:12]
        name = "".join(ch if ch.isalnum() else "-" for ch in (run.class_name or "classes").lower())
        return f"guidance-{name}-seed{run.request.seed}-{digest}"

    def _prune(self) -> None:
        files = sorted(self.folder.iterdir(), key=lambda p: p.stat().st_mtime)
        for path in files[:-KEPT_DOWNLOADS]:
            path.unlink(missing_ok=True)
