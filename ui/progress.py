"""Progress bars with a rate and an ETA for long engine calls (embedding)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def embed_progress(bar: Any, label: str = "") -> Callable[[int, int], None]:
    """A progress callback for ``embed_dataset`` that shows images/s and an ETA on ``bar``.

    The first report already counts the cached images, so the rate is measured from it.
    """
    first: list[tuple[int, float]] = []
    prefix = f"{label}: " if label else ""

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if not first:
            first.append((done, now))
        start_done, start_time = first[0]
        rate = (done - start_done) / (now - start_time) if now > start_time else 0.0
        eta = f" · ETA {fmt_duration((total - done) / rate)}" if rate > 0 and done < total else ""
        bar.progress(done / total if total else 1.0, text=f"{prefix}{done:,}/{total:,} images · {rate:.1f} img/s{eta}")

    return progress


def scan_progress(bar: Any) -> Callable[[int, int], None]:
    """A progress callback for a scan: "Checking images: done/total" on ``bar``."""

    def progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"Checking images: {done}/{total}")

    return progress


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
