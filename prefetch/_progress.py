"""A one-line progress display on stderr for long command-line work: count, rate and time left.

It draws only when stderr is a terminal, so piped or logged output stays clean, and
at most ten times a second, so that counting a million small steps costs nothing.
"""

from __future__ import annotations

import sys
import time

REDRAW_S = 0.1


class Progress:
    """`step()` once per unit of work; `finish()` clears the line."""

    def __init__(self, total: int | None, what: str, enabled: bool = True) -> None:
        self.total, self.what, self.done = total, what, 0
        self.enabled = enabled and sys.stderr.isatty()
        self.started = self.drawn = time.monotonic()

    def step(self, label: str = "", count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self.drawn >= REDRAW_S or self.done == self.total or label):
            self.drawn = now
            rate = self.done / max(now - self.started, 1e-9)
            text = f"{self.done:,}"
            if self.total:
                filled = 20 * self.done // self.total
                left = (self.total - self.done) / rate if rate > 0 else 0.0
                bar = "#" * filled + "." * (20 - filled)
                text = f"[{bar}] {text}/{self.total:,} {self.what}, {_duration(left)} left"
            else:
                text += f" {self.what}"
            sys.stderr.write(f"\r{text}, {rate:,.0f}/s {label}"[:120].ljust(120))
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 120 + "\r")
            sys.stderr.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
