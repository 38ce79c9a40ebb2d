"""Progress bars: plain lines (no cursor control) off a terminal; on one, the clock starts after
the first (compiling) step."""

import io
import time

from ppow_jax.progress import Progress, duration


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_plain_lines_when_not_a_terminal():
  out = io.StringIO()
  bar = Progress(3, "sft", stream=out, interval_s=0.0)
  for i in range(3):
    bar.set_postfix(f"loss={i}")
    bar.update()
  bar.close()
  text = out.getvalue()
  assert "\r" not in text and "\x1b" not in text
  lines = text.splitlines()
  assert lines[0].startswith("sft: 1/3 steps (first step, with compilation: ")
  assert lines[1].startswith("sft: 2/3 steps, ") and lines[1].endswith("; loss=1")
  assert lines[-1].startswith("sft: 3/3 steps in ") and lines[-1].endswith("; loss=2")
  quiet = io.StringIO()  # a transient bar (leave=False) prints nothing off a terminal
  bar = Progress(2, "decode", stream=quiet, leave=False, interval_s=0.0)
  bar.update()
  bar.update()
  bar.close()
  assert quiet.getvalue() == ""


def test_terminal_clock_starts_after_the_first_step():
  out = _Terminal()
  bar = Progress(4, "ppow", stream=out)
  assert "compiling" in out.getvalue()
  time.sleep(1.3)  # the first step compiles
  for _ in range(4):
    bar.update()
  bar.close()  # draws the final state
  last = [f for f in out.getvalue().split("\r") if "4/4" in f][-1]
  assert "4/4 [00:00<" in last and "compiling" not in last  # 1.3 s of compiling not counted


def test_duration_is_rounded_for_reading():
  assert [duration(s) for s in (3.14159, 45.4, 192, 3725)] == [
      "3.1 s", "45 s", "3 min 12 s", "1 h 02 min"]


def test_time_budgeted_loop_shows_the_step_its_budget_ends_at():
  from ppow_jax.training.loop import _steps_in_budget
  # 10 of 60 CPU seconds spent at 2 CPU s/step: ~25 steps left, not the nominal 1e6.
  step = {"step_time": 1.0, "step_cpu_time": 2.0}
  assert _steps_in_budget(5, 1_000_000, 5.0, 10.0, 0, 60.0, step) == 30
  # The tighter of wall and CPU budgets decides; the nominal count caps it.
  assert _steps_in_budget(5, 1_000_000, 5.0, 10.0, 8.0, 60.0, step) == 8
  assert _steps_in_budget(5, 12, 5.0, 10.0, 0, 60.0, step) == 12
  assert _steps_in_budget(5, 100, 50.0, 70.0, 0, 60.0, step) == 5  # over budget already
