"""A dependency-free progress bar for long loops, drawn on stderr.

On a terminal the line is redrawn in place with ``\\r`` (at most ~10 times a
second, so drawing never costs measurable time); when stderr is a file or a
pipe only the final line of each bar is written, so logs stay readable.
"""
import sys
import time


def format_duration(seconds):
    """``83`` -> ``"1:23"``, ``3723`` -> ``"1:02:03"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressBar:
    """``bar = ProgressBar(total, "epoch 1/8")``; ``bar.update(done, images, loss=0.3)``; ``bar.close(text)``.

    Shows ``label [#####.....] done/total  loss 0.3000  42.0 img/s  ETA 0:12``.
    """

    def __init__(self, total, label="", stream=None, initial=0, width=24, min_interval=0.1):
        self.total = max(1, int(total))
        self.initial = int(initial)     # steps already done before this bar (a resumed epoch)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.min_interval = min_interval
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.images = 0
        self.done = self.initial
        self._last_draw = 0.0
        self._last_len = 0

    def update(self, done, images=0, **values):
        """``done`` steps of ``total`` finished, ``images`` more images processed."""
        now = time.perf_counter()
        self.done = done
        self.images += images
        if self.interactive and (now - self._last_draw >= self.min_interval or done >= self.total):
            self._last_draw = now
            self._draw(self.line(**values))

    def line(self, **values):
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        steps = max(self.done - self.initial, 1)
        eta = (self.total - self.done) * elapsed / steps
        filled = int(self.width * self.done / self.total)
        parts = [f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                 f"{self.done}/{self.total}"]
        parts += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()]
        parts.append(f"{self.images / elapsed:.1f} img/s")
        parts.append(f"ETA {format_duration(eta)}" if self.done < self.total
                     else f"{format_duration(elapsed)}")
        return "  ".join(parts)

    def _draw(self, text):
        pad = max(0, self._last_len - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._last_len = len(text)

    def close(self, text=None):
        """End the bar with ``text`` (default: the bar's own final line) and a newline."""
        text = self.line() if text is None else text
        if self.interactive:
            self._draw(text)
            self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last_len = 0

    def status(self, text):
        """Replace the in-place line by ``text`` (e.g. "validating...") on a terminal."""
        if self.interactive:
            self._draw(f"{self.label}  {text}")

    def clear(self):
        """Erase the in-place line (before printing a message under it)."""
        if self.interactive and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()
            self._last_len = 0
