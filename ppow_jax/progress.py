"""Progress bars for jitted loops: the clock starts after the first (compiling) step, and output
that is not a terminal gets plain lines instead of cursor control.

On a terminal this is a tqdm bar reading "compiling" until the first step is done; its rate and
ETA then count only the steps after it, so a minute of XLA compilation does not inflate the
first estimate. When stderr is a file or a pipe, a bar that is kept (`leave=True`) prints one
plain line every `interval_s` seconds and a last one when it closes; a transient bar prints
nothing.
"""

from __future__ import annotations

import sys
import time

import tqdm


def duration(seconds: float) -> str:
  """'45 s', '3 min 12 s', '1 h 05 min': rounded for reading."""
  s = int(round(seconds))
  if s < 60:
    return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
  if s < 3600:
    return f"{s // 60} min {s % 60:02d} s"
  return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
  """A counter of `total` steps, shown as described in the module docstring."""

  def __init__(self, total: int, desc: str, *, initial: int = 0, unit: str = "step",
               leave: bool = True, enabled: bool = True, interval_s: float = 30.0, stream=None):
    self.desc, self.unit, self.leave = desc, unit, leave
    self.n, self._total = initial, total
    self.postfix = ""
    self._stream = stream or sys.stderr
    self._interval = interval_s
    self._started = False  # the first (compiling) step is done
    self._t_open = time.perf_counter()
    self._t0, self._n0 = self._t_open, initial
    self._last_line = self._t_open
    isatty = getattr(self._stream, "isatty", lambda: False)()
    self._bar = None
    self._lines = enabled and not isatty and leave
    if enabled and isatty:
      self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                            dynamic_ncols=True, smoothing=0, file=self._stream)
      self._bar.set_postfix_str("compiling", refresh=True)

  @property
  def total(self) -> int:
    return self._total

  @total.setter
  def total(self, value: int):
    self._total = value
    if self._bar is not None:
      self._bar.total = value
      self._bar.refresh()

  def set_postfix(self, text: str):
    self.postfix = text
    if self._bar is not None:
      self._bar.set_postfix_str(text, refresh=False)

  def update(self, n: int = 1):
    self.n += n
    now = time.perf_counter()
    first = not self._started
    if first:  # Restart the clock: rates count the steps after compilation only.
      self._started, self._t0, self._n0 = True, now, self.n
    if self._bar is not None:
      if first:  # tqdm's clock and count restart here; "compiling" is over
        self._bar.start_t, self._bar.initial = time.time(), self._bar.n + n
        self._bar.set_postfix_str(self.postfix, refresh=False)
      self._bar.update(n)
    elif self._lines and (first or now - self._last_line >= self._interval):
      self._last_line = now
      self._print(self._line(now, first))

  def _rate(self, now: float) -> float | None:
    done, dt = self.n - self._n0, now - self._t0
    return done / dt if done > 0 and dt > 0 else None

  def _line(self, now: float, first: bool) -> str:
    head = f"{self.desc}: {self.n}/{self._total} {self.unit}s"
    if first:
      return f"{head} (first step, with compilation: {duration(now - self._t_open)})"
    rate = self._rate(now)
    eta = (f", ETA {duration((self._total - self.n) / rate)}" if rate and self._total > self.n
           else "")
    speed = f", {rate:.3g} {self.unit}s/s" if rate else ""
    return f"{head}{speed}{eta}" + (f"; {self.postfix}" if self.postfix else "")

  def _print(self, text: str):
    print(text, file=self._stream, flush=True)

  def close(self):
    if self._bar is not None:
      self._bar.close()
    elif self._lines:
      now = time.perf_counter()
      self._print(f"{self.desc}: {self.n}/{self._total} {self.unit}s in "
                  f"{duration(now - self._t_open)}" + (f"; {self.postfix}" if self.postfix else ""))
    self._bar, self._lines = None, False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
