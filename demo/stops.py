"""Stop requests: the run in progress of each session, and what ends it within one step (the Stop
button, the client going away)."""
from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class RunProgress:
    """Where a run in progress is; written by the run after every step, read by Stop."""
    steps_done: int = 0
    stop_came: int | None = None  # steps_done when Stop came; None while it has not


class StopRequests:
    """The run in progress of each session, and Stop requests for it: the Stop button, or the
    client going away (the page's unload event). A run checks its own progress after every step,
    so Stop ends it within one step (cancelling through Gradio alone waits for the next streamed
    frame). Only running sessions are kept: a Stop with nothing running is dropped, and sessions
    that come and go leave nothing behind."""

    def __init__(self):
        self._runs: dict[str, RunProgress] = {}
        self._lock = threading.Lock()

    def start(self, session: str | None) -> RunProgress:
        """A new run for session; a Stop pressed before it does not end it."""
        progress = RunProgress()
        if session is not None:
            with self._lock:
                self._runs[session] = progress
        return progress

    def request(self, session: str | None) -> None:
        """Stop the session's run after its current step."""
        with self._lock:
            progress = self._runs.get(session)
            if progress is not None and progress.stop_came is None:
                progress.stop_came = progress.steps_done

    def end(self, session: str | None, progress: RunProgress) -> None:
        with self._lock:
            if self._runs.get(session) is progress:  # not a newer run of the same session
                del self._runs[session]
