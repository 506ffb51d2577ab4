"""One error base for everything a user can get wrong, caught once at each entry point.

`jaxvision.cli.main` and `python -m train` catch `UserError` and print its message as
one line (exit status 1); anything else is a bug and keeps its traceback. Each kind
also derives from the builtin its callers used to catch (ValueError, RuntimeError),
so `except ValueError` in user code written against older jaxvision still works.
"""
from __future__ import annotations


class UserError(Exception):
  """A mistake in the user's input, files or configuration; the message is one line."""


class DataError(UserError, ValueError):
  """A dataset, split, file or record that cannot be used; the message names it."""


class CheckpointError(UserError, RuntimeError):
  """A workdir or checkpoint that cannot be read, or holds another kind of model."""


class WeightsError(UserError, ValueError):
  """A weights file that cannot be read or does not fit the model."""


class FileFormatError(UserError, ValueError):
  """A file of a jaxvision format (.jvc, CDF tables, ...) that is damaged or foreign."""


class OutputError(UserError, OSError):
  """An output path that cannot be written (a folder, a missing or read-only folder, ...)."""


class ConfigError(UserError, ValueError):
  """A config key or command-line value that is out of range or unknown."""


class ResourceError(UserError, MemoryError):
  """Work that would need more memory than the machine has (checked before it starts)."""


class TrainingError(UserError, RuntimeError):
  """A training run that cannot go on (non-finite loss, mismatched resume, ...)."""


def first_line(e: BaseException, limit: int = 300) -> str:
  """The first line of an exception's message (its type name when it has none)."""
  text = str(e).strip()
  return text.splitlines()[0][:limit] if text else type(e).__name__
