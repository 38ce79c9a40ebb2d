"""Errors the user can fix (a bad path, file, value or config key), told apart from bugs.

`python -m ppow_jax.main` prints a UserError as one line and exits with status 2; any other
exception keeps its traceback. The project's specific errors (ConfigError, CheckpointError,
PromptFileError, ...) derive from UserError, and from ValueError as before, so callers that catch
ValueError still do. This module imports nothing heavy: every layer of the package may use it.
"""

from __future__ import annotations

EXIT_STATUS = 2  # As argparse and absl use for a bad command line.


class UserError(Exception):
  """An error in what the user gave (command line, config, files); the message names it."""


class ConfigValueError(UserError, ValueError):
  """A config value out of range, of the wrong kind or inconsistent with the files it names."""


def is_user_error(e: BaseException) -> bool:
  """UserErrors, and FileNotFoundError: every path the modes open comes from the config."""
  return isinstance(e, (UserError, FileNotFoundError))


def message(e: BaseException) -> str:
  """The one-line text for a user error (an OS error says which file)."""
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f"{e.filename}: {e.strerror}"
  text = str(e) or type(e).__name__
  return " ".join(text.split()) if "\n" in text.strip() else text.strip()
