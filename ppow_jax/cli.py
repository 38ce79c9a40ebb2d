"""The command line's error path: a mistake the user can fix is one line and exit status 2.

Two places fail for the user: absl's flag parsing (an unknown `--config.a.b` key, a bad value, a
missing config file), which runs before `main`, and the mode itself (`user_errors.UserError`,
FileNotFoundError). Both print `error: <what, naming the field/file/value>` on stderr and exit
with status 2. Ctrl-C (SIGINT) and SIGTERM print one line and exit with 130 / 143. Anything else
keeps its traceback. `--debug` or PPOW_DEBUG=1 shows tracebacks for all.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import signal
import sys
import threading
import time

from absl import flags

from ppow_jax import user_errors

DEBUG_ENV = "PPOW_DEBUG"
_DEBUG_ARGS = ("--debug", "-debug", "--debug=true", "--debug=True", "--debug=1")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def debug_requested(argv=None) -> bool:
  """PPOW_DEBUG=1, or --debug: in `argv` while absl has not parsed it yet, else the flag."""
  if os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no"):
    return True
  if argv is not None:
    return any(a in _DEBUG_ARGS for a in argv)
  return bool(flags.FLAGS.is_parsed() and flags.FLAGS.get_flag_value("debug", False))


def fail(message: str):
  """Prints `error: message` on stderr and exits with status 2."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(user_errors.EXIT_STATUS)


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so both unwind alike."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


INTERRUPTED = ("interrupted ({signal}): finished work is kept (training checkpoints, decoded "
               "batches); rerun the same command to resume")
GRACE_S = 5.0  # how long the main thread may take to see a signal before the watchdog exits
_announced = threading.Event()  # the one `interrupted` line is out


def _announce(signum: int):
  if not _announced.is_set():
    _announced.set()
    sys.stdout.flush()
    print(INTERRUPTED.format(signal=signal.Signals(signum).name), file=sys.stderr, flush=True)


def _watch_signals():
  """Exits GRACE_S after a SIGINT / SIGTERM that the main thread has not acted on.

  Python runs signal handlers in the main thread between bytecodes, so a Ctrl-C that arrives
  during a long compiled computation (a chunk of self-distillation answers takes minutes on a
  CPU) would otherwise wait for it. The C-level handler writes the signal number to a wakeup
  pipe at once; this thread reads it. Finished work is safe: outputs are written atomically or
  as whole lines, and a checkpoint that is not finalized is ignored on resume.
  """
  r, w = os.pipe()
  os.set_blocking(w, False)
  try:
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
  except ValueError:  # not the main thread (e.g. called from a test harness): no watchdog
    return

  def watch():
    while True:
      signum = os.read(r, 1)[0]
      if signum in (signal.SIGINT, signal.SIGTERM):
        time.sleep(GRACE_S)
        _announce(signum)
        os._exit(128 + signum)

  threading.Thread(target=watch, name="signal-watchdog", daemon=True).start()


def run_main(main_fn):
  """Wraps absl's `main(argv)`: user errors become one line and exit status 2; Ctrl-C (SIGINT)
  and SIGTERM one line and status 130 / 143 (128 + the signal, as a shell reports it)."""

  def wrapped(argv):
    signal.signal(signal.SIGTERM, _raise_terminated)
    if not debug_requested():
      _watch_signals()
    try:
      return main_fn(argv)
    except KeyboardInterrupt as e:
      if debug_requested():
        raise
      sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
      _announce(sig)
      sys.exit(128 + sig)
    except Exception as e:  # noqa: BLE001 -- re-raised unless it is the user's to fix
      if debug_requested() or not user_errors.is_user_error(e):
        raise
      fail(user_errors.message(e))

  return wrapped


def make_config_package_importable(path: str):
  """Puts the folder above the config file's package (configs/, with its __init__.py) first on
  sys.path, so a config's `import configs` works wherever the command runs from."""
  top = os.path.dirname(os.path.abspath(path))
  if not os.path.isfile(os.path.join(top, "__init__.py")):
    return
  while os.path.isfile(os.path.join(os.path.dirname(top), "__init__.py")):
    top = os.path.dirname(top)
  root = os.path.dirname(top)
  if root not in sys.path:
    sys.path.insert(0, root)


def parse_flags(argv):
  """absl `flags_parser`: parses argv, turning command-line mistakes into one-line errors."""
  debug = debug_requested(argv)
  spec = _config_spec(argv)
  if spec and not debug:
    path = spec.split(":", 1)[0]
    if not os.path.isfile(path):
      fail(f"--config={spec}: no such config file")
  if spec:
    make_config_package_importable(spec.split(":", 1)[0])
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if debug:
      raise
    if spec is None and isinstance(e, flags.IllegalFlagValueError):  # the required --config
      fail("--config is required: python -m ppow_jax.main --config configs/X.py [--workdir DIR] "
           "[--config.a.b=value]")
    if "Traceback (most recent call last)" in str(e):
      # ml_collections puts the config file's own traceback in the message: its last line says
      # what went wrong (e.g. an argument `path:arg` that get_config() does not take).
      last = [line for line in str(e).splitlines() if line.strip()][-1].strip()
      fail(f"--config={spec}: the config file does not load: {last}")
    fail(user_errors.message(e))
  except (KeyError, AttributeError, IndexError, TypeError, ValueError) as e:
    # ml_collections resolves each --config.a.b override against the loaded config while
    # parsing; an unknown key surfaces here as a KeyError/AttributeError.
    explained = None if debug or not spec else unknown_override(spec, argv)
    if explained is None:
      raise
    fail(explained)


def _config_spec(argv) -> str | None:
  """The value of --config (`path` or `path:argument`) in argv, if given."""
  for i, a in enumerate(argv[1:], 1):
    m = re.match(r"^--?config(=(.*))?$", a)
    if m:
      if m.group(1) is not None:
        return m.group(2)
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


def _load_config(spec: str):
  """The ConfigDict a config file's get_config() returns (as ml_collections calls it)."""
  path, _, arg = spec.partition(":")
  make_config_package_importable(path)
  module_spec = importlib.util.spec_from_file_location("ppow_cli_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def unknown_override(spec: str, argv) -> str | None:
  """'--config.a.b: config.a has no field "b"; did you mean ...' for the first override whose
  path does not exist in the config, or None if every override resolves."""
  from ml_collections.config_flags import config_path
  try:
    config = _load_config(spec)
  except Exception:  # noqa: BLE001 -- the config itself fails: let the original error show
    return None
  for arg in argv[1:]:
    m = _OVERRIDE.match(arg)
    if not m:
      continue
    name = m.group(1)
    node, where = config, "config"
    for part in config_path.split(name):
      keys = list(node.keys()) if hasattr(node, "keys") else None
      if keys is not None and part in keys:
        node, where = node[part], f"{where}.{part}"
        continue
      if isinstance(part, int) and isinstance(node, (list, tuple)) and -len(node) <= part < len(node):
        node, where = node[part], f"{where}[{part}]"
        continue
      if keys is None:
        return (f"--config.{name}: {where} is a value ({type(node).__name__}), not a group of "
                "fields")
      close = difflib.get_close_matches(str(part), [str(k) for k in keys], n=3, cutoff=0.85)
      hint = (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close
              else f"; it has {', '.join(map(str, keys))}")
      return f"--config.{name}: {where} has no field {part!r} ({spec}){hint}"
  return None
