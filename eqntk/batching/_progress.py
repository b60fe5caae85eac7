"""A one-line progress bar for tiled computations (no dependencies)."""

import io
import sys
import time
from collections.abc import Callable


def progress_bar(
    total: int,
    enabled: bool,
    stream: io.TextIOBase | None = None,
    initial: int = 0,
    count_done: Callable[[], int] | None = None,
) -> Callable[[int], None]:
    """A function `advance(n)` that records `n` more finished tiles and redraws the bar.

    The bar shows tiles done out of `total`, the rate and the estimated time left, on one line of
    `stream` (default `sys.stderr`), and ends the line when the last tile is done. `initial`
    tiles were done before (found on disk): they count as done, not in the rate. When tiles are
    also finished elsewhere (other processes writing one store), `count_done()` counts all the
    finished ones at each redraw, in place of the local count. When `enabled` is false,
    `advance` does nothing, so callers never branch on it.
    """
    out = sys.stderr if stream is None else stream
    start = time.perf_counter()
    done = initial
    last_draw = -1.0

    def advance(n: int) -> None:
        nonlocal done, last_draw
        done += n
        if enabled and count_done is not None:
            done = max(done, count_done())
        now = time.perf_counter()
        finished = done >= total
        # Redraw at most five times a second: a terminal write per tile would cost real time
        # when tiles are small.
        if not enabled or (now - last_draw < 0.2 and not finished):
            return
        last_draw = now
        line = _line(done, total, now - start, initial)
        out.write("\r" + line + ("\n" if finished else ""))
        out.flush()

    return advance


def _line(done: int, total: int, elapsed: float, initial: int = 0) -> str:
    width = 30
    filled = width * done // max(total, 1)
    rate = (done - initial) / elapsed if elapsed > 0 else 0.0
    left = _clock((total - done) / rate) if rate > 0 else "?"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} tiles, "
        f"{rate:.2f} tiles/s, {_clock(elapsed)} elapsed, {left} left"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
