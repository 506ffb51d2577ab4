"""What the commands take: image files or folders of them, with one policy for many inputs.

  image_files(paths)                   a folder stands for the image files inside it
  any_folder(paths)                    whether the many-inputs policy applies
  check_output_folder(out, folder, ext)  a folder input needs a folder output
  folder_outputs(inputs, folder, ext)  OUT/<stem><ext> for each input, refusing clashes
  make_folder(path)                    the output folder, once the model has loaded
  for_each(items, fn, command=...)     the loop: a progress bar, one line per failure
  ReadAhead(items, fn), read_each      inputs decoded ahead on threads, in order, bounded
  progress(total)                      the bar alone, for a loop of another shape
  say(line)                            a result line on stdout that keeps the bar intact
  positive_int, positive_float,        argparse types for numeric flags: a zero, negative,
  nonnegative_int, nonnegative_float   NaN or infinite value is argparse's one error line

Why one module: `enhance`, `compress`, `decompress`, `upscale`, `stylize`, `classify` and
`detect-faces` all run over a user's folder of photos the same way. A folder is not read
recursively (a photo library's subfolders are often other collections; give them as
further arguments where a command takes many). Hidden files and files of other
extensions (a sidecar .xmp, a .json) are skipped. The error policy for many inputs: a
file that cannot be read gets one line naming it on stderr, the others are still done
and written (atomically: never a half-written output), and the command ends with exit
status 1 and a summary ("2 of 21 inputs failed"), so a script sees the failure and a
user keeps the 19 good results. One file given as a file keeps the single-file
behaviour: its error is the command's one error line, exactly as before folders.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
from typing import Any, Callable, Iterable, Sequence

from jaxvision.core.errors import DataError, UserError, first_line


def _number(kind, lowest: float, strict: bool, what: str):
  import argparse
  import math

  def parse(text: str):
    try:
      v = kind(text)
    except (TypeError, ValueError):
      raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(v) or (v <= lowest if strict else v < lowest):
      raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
    return v

  parse.__name__ = what  # argparse names the type in its messages
  return parse


positive_int = _number(int, 0, True, "a positive integer")
nonnegative_int = _number(int, 0, False, "a non-negative integer")
positive_float = _number(float, 0.0, True, "a positive number")
nonnegative_float = _number(float, 0.0, False, "a non-negative number")
from jaxvision.core.io import IMAGE_EXTENSIONS

# A progress bar for more inputs than this (a handful of lines needs none).
PROGRESS_MIN = 3


def image_files(paths: Iterable[str], extensions: Iterable[str] = IMAGE_EXTENSIONS
                ) -> list[str]:
  """The inputs named by `paths`: a folder becomes its files with one of `extensions`
  (case-insensitive, sorted by name, not recursive, hidden files skipped); a file (or a
  missing path: its own error comes when it is read) stays as given. A path given twice
  is read once. A folder without such files is a `DataError`: an empty run is a mistake."""
  exts = {e.lower() for e in extensions}
  out: list[str] = []
  for p in paths:
    if os.path.isdir(p):
      try:
        names = os.listdir(p)
      except OSError as e:
        raise DataError(f"{p}: cannot list the folder ({e.strerror or e})") from None
      found = sorted(os.path.join(p, f) for f in names
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts
                     and os.path.isfile(os.path.join(p, f)))
      if not found:
        raise DataError(f"{p}: no files of the kinds read here ({', '.join(sorted(exts))})")
      out.extend(found)
    else:
      out.append(p)
  return list(dict.fromkeys(out))


def any_folder(paths: Iterable[str]) -> bool:
  """Whether some of `paths` is a folder (then the many-inputs policy applies)."""
  return any(os.path.isdir(p) for p in paths)


def check_output_folder(output: str, folder: str, ext: str) -> None:
  """A folder input `folder` writes one file per input, so `output` must be a folder: one
  that exists, or a new one in an existing folder (created by `make_folder`). A file, or
  a new name ending in the command's file extension `ext` (".png") or an image one, is a
  one-line error: the user meant one output file, so a folder input is likely a mistake."""
  if os.path.isdir(output):
    return
  suffix = os.path.splitext(output)[1].lower()
  if os.path.exists(output) or suffix == ext.lower() or suffix in IMAGE_EXTENSIONS:
    raise UserError(f"{output}: the input {folder} is a folder, so the output must be a "
                    "folder too")
  parent = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(parent):  # a typo in a folder name is an error, not a new tree
    raise DataError(f"{output}: output folder {parent} does not exist")


def folder_outputs(inputs: Sequence[str], folder: str, ext: str) -> list[str]:
  """`folder/<input's base name without extension><ext>` for each input.

  Refuses, before anything runs, two inputs that would write the same file (a.png and
  a.jpg -> a.png: one result would silently replace the other) and an output that is
  one of the inputs (enhancing a folder of PNGs into itself would replace the photos)."""
  outs = [os.path.join(folder, os.path.splitext(os.path.basename(p))[0] + ext)
          for p in inputs]
  seen: dict[str, str] = {}
  for p, o in zip(inputs, outs):
    key = os.path.normcase(os.path.abspath(o))
    if key in seen:
      raise UserError(f"{seen[key]} and {p} would both be written to {o}; rename one")
    seen[key] = p
  sources = {os.path.normcase(os.path.realpath(p)) for p in inputs}
  for p, o in zip(inputs, outs):
    if os.path.normcase(os.path.realpath(o)) in sources:
      raise UserError(f"{o}: would overwrite an input; choose another output folder")
  return outs


def make_folder(path: str) -> None:
  """Creates the output folder (its parent exists: `check_output_folder` said so)."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise DataError(f"{path}: cannot create the output folder ({e.strerror or e})") from None


def say(line: str) -> None:
  """Prints a result line on stdout; an active progress bar (stderr) is redrawn below it.
  In a lane of `for_each` the line waits for its item's turn."""
  lines = getattr(_CAPTURE, "lines", None)
  if lines is not None:
    lines.append(line)
    return
  from tqdm import tqdm
  tqdm.write(line, file=sys.stdout)


def _label(item: Any) -> str:
  return str(item[0] if isinstance(item, tuple) else item)


@dataclasses.dataclass
class Outcome:
  """What `for_each` did: the results of the inputs that worked, the labels of those that
  failed, and how many there were."""
  results: dict = dataclasses.field(default_factory=dict)
  failed: list = dataclasses.field(default_factory=list)
  total: int = 0

  def raise_if_failed(self) -> None:
    """The summary as the command's one error (exit status 1), after all else is done."""
    if self.failed:
      raise UserError(f"{len(self.failed)} of {self.total} inputs failed")


def for_each(items: Sequence, fn: Callable[[Any], Any], *, command: str, strict: bool = False,
             label: Callable[[Any], str] = _label, lanes: Sequence[int] | None = None) -> Outcome:
  """Runs `fn(item)` for each item; `Outcome.results` maps the label to fn's result.

  A `UserError` (an unreadable image, a damaged .jvc, ...) or `OSError` from one item is
  one line on stderr, "jaxvision COMMAND: error: PATH: why", and the loop goes on; the
  caller ends with `raise_if_failed()`. With `strict` (one input given as a file) the
  error propagates unchanged: the single-file commands behave as they always did.
  Anything else is a bug and stops the loop with its traceback.

  `lanes` (one number per item): the items of each lane run one after another in a thread
  of their own, the lanes at once (a command gives each device a lane); results, `say`
  lines and error lines still come out in the items' order.

  More than PROGRESS_MIN items get a tqdm bar on stderr (only on a terminal: tqdm turns it
  off for pipes and files, so logs hold no bar debris).
  """
  out = Outcome(total=len(items))
  parallel = lanes is not None and len(set(lanes)) > 1 and not strict
  pending = _run_in_lanes(items, fn, lanes) if parallel else None
  with progress(len(items)) as bar:
    for i, item in enumerate(items):
      name = label(item)
      try:
        if pending is None:
          out.results[name] = fn(item)
        else:
          lines, result = pending[i].result()
          for line in lines:
            say(line)
          if isinstance(result, BaseException):
            raise result
          out.results[name] = result
      except (UserError, OSError) as e:
        if strict:
          raise
        _failed(out, name, e, command)
      except BaseException:
        if pending is not None:
          for f in pending:
            f.cancel()
        raise
      bar.update()
  return out


def _failed(out: Outcome, name: str, e: BaseException, command: str) -> None:
  """Records input `name` as failed and says why in one line that starts with its name."""
  from tqdm import tqdm
  if isinstance(e, OSError) and not isinstance(e, UserError):
    why = f"{e.filename or name}: {e.strerror or first_line(e, 1000)}"
  else:
    why = first_line(e, 1000)
  if not why.startswith(name):  # every line starts with the file it is about
    why = f"{name}: {why}"
  out.failed.append(name)
  tqdm.write(f"jaxvision {command}: error: {why}", file=sys.stderr)


class ReadAhead:
  """Reads `fn(item)` for each item on `threads` daemon threads, in order, ahead of the
  consumer by at most `window` items and `budget` bytes of results (numpy arrays count
  their nbytes): a folder of photos is decoded while the command imports JAX and loads
  its programs, and while it computes on the previous photos, without holding every
  photo in memory at once (a thousand 12-megapixel photos would be 36 GB decoded). One
  result larger than the budget is still read, alone.

  Start it as early as the inputs are known (`jaxvision` calls a command's `early` hook
  before it imports JAX: decoding releases the GIL, so the second core works while the
  first imports). Iterating yields (item, ok, result or exception) in the items' order;
  `read_each` applies the many-inputs policy to that. Threads are daemons: a command that
  stops early leaves at most the reads under way behind and does not wait for them."""

  def __init__(self, items: Sequence, fn: Callable[[Any], Any], threads: int = 2,
               window: int = 64, budget: int = 512 << 20):
    self.items = list(items)
    self._fn = fn
    self._results: list = [None] * len(self.items)
    self._done = [threading.Event() for _ in self.items]
    self._window, self._budget = max(1, window), budget
    self._cond = threading.Condition()
    self._next = self._taken = self._held = 0  # started, consumed, bytes not consumed
    self._closed = False
    for _ in range(max(1, min(threads, len(self.items)))):
      threading.Thread(target=self._work, daemon=True).start()

  def __len__(self) -> int:
    return len(self.items)

  def _work(self) -> None:
    while True:
      with self._cond:
        self._cond.wait_for(lambda: self._closed or self._next >= len(self.items) or (
            self._next - self._taken < self._window
            and (self._held < self._budget or self._next == self._taken)))
        if self._closed or self._next >= len(self.items):
          return
        i = self._next
        self._next += 1
      try:
        result = (True, self._fn(self.items[i]))
      except BaseException as e:  # noqa: BLE001 - handed to the consumer, in order
        result = (False, e)
      size = int(getattr(result[1], "nbytes", 0) or 0)
      with self._cond:
        self._results[i] = result + (size,)
        self._held += size
      self._done[i].set()

  def __iter__(self):
    for i, item in enumerate(self.items):
      self._done[i].wait()
      (ok, result, size), self._results[i] = self._results[i], None
      with self._cond:
        self._taken += 1
        self._held -= size
        self._cond.notify_all()
      yield item, ok, result

  def close(self) -> None:
    """No further reads start (those under way finish in their daemon threads)."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()


def read_each(reader: ReadAhead, *, command: str, strict: bool = False,
              outcome: Outcome | None = None, label: Callable[[Any], str] = _label):
  """Yields (label, result) of each input `reader` read, in order, with `for_each`'s
  policy: a `UserError` or `OSError` is one line on stderr and recorded in `outcome` (the
  caller ends with `outcome.raise_if_failed()`); with `strict` it propagates unchanged;
  anything else is a bug and propagates with its traceback."""
  out = Outcome(total=len(reader)) if outcome is None else outcome
  try:
    for item, ok, result in reader:
      name = label(item)
      if ok:
        out.results[name] = None  # the label, in order; the caller keeps what it needs
        yield name, result
        continue
      if strict or not isinstance(result, (UserError, OSError)):
        raise result
      _failed(out, name, result, command)
  finally:
    reader.close()


_CAPTURE = threading.local()  # a lane's `say` lines, kept for the item's turn


def _run_in_lanes(items, fn, lanes):
  """Futures of (say lines, fn's result or exception) per item, one thread per lane."""
  import concurrent.futures

  def run(item):
    _CAPTURE.lines = []
    try:
      return _CAPTURE.lines, fn(item)
    except Exception as e:  # noqa: BLE001 - handed to the caller's thread, in order
      return _CAPTURE.lines, e
    finally:
      _CAPTURE.lines = None

  pools = {lane: concurrent.futures.ThreadPoolExecutor(1) for lane in sorted(set(lanes))}
  futures = [pools[lane].submit(run, item) for item, lane in zip(items, lanes)]
  for pool in pools.values():
    pool.shutdown(wait=False)  # each finishes its queue; the caller waits on the futures
  return futures


def progress(total: int, unit: str = "file"):
  """A tqdm bar on stderr for `total` steps, drawn for more than PROGRESS_MIN of them and
  only on a terminal (tqdm's disable=None: pipes and log files get no bar debris)."""
  from tqdm import tqdm
  return tqdm(total=total, file=sys.stderr, unit=unit, leave=False, dynamic_ncols=True,
              disable=True if total <= PROGRESS_MIN else None)


def one_to_one_jobs(input_path: str, output: str, ext: str = ".png",
                    must_exist: bool = True) -> tuple[list[tuple[str, str]], bool]:
  """([(input, output)], is_folder) for a command that writes one file per input: a
  folder in gives its images and a folder out (`check_output_folder`, `folder_outputs`);
  a file in must be written to a file ending in `ext` (and exist, when `must_exist`)."""
  if os.path.isdir(input_path):
    check_output_folder(output, input_path, ext)
    sources = image_files([input_path])
    return list(zip(sources, folder_outputs(sources, output, ext))), True
  if not output.lower().endswith(ext):
    raise UserError(f"{output}: output must be a {ext} file")
  if must_exist and not os.path.isfile(input_path):
    raise UserError(f"{input_path}: no such file")
  return [(input_path, output)], False
