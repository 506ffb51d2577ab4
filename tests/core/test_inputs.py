"""Folders as command inputs: which files, which outputs, and the many-inputs error policy."""
import os

import pytest

from jaxvision.core import inputs
from jaxvision.core.errors import DataError, UserError
from tests.conftest import image_folder


def test_image_files_sorted_not_recursive_hidden_and_others_skipped(tmp_path):
  folder, stems, damaged = image_folder(tmp_path)
  os.makedirs(os.path.join(folder, "sub"))
  open(os.path.join(folder, "sub", "deep.png"), "w").close()
  open(os.path.join(folder, ".hidden.png"), "w").close()
  open(os.path.join(folder, "UPPER.JPG"), "w").close()
  got = inputs.image_files([folder])
  assert got == [os.path.join(folder, f) for f in
                 ("UPPER.JPG", "a.png", "b.png", "bad.png", "c.png")]
  # files stay as given (missing ones too: their error comes when read), in order, once
  other = str(tmp_path / "x.png")
  assert inputs.image_files([other, folder, other])[:2] == [other, got[0]]
  assert len(inputs.image_files([other, folder, other])) == 1 + len(got)
  assert inputs.image_files([folder], {".txt"}) == [os.path.join(folder, "notes.txt")]


def test_empty_folder_is_an_error(tmp_path):
  (tmp_path / "readme.md").write_text("")
  with pytest.raises(DataError, match="no files of the kinds read here"):
    inputs.image_files([str(tmp_path)])


def test_folder_outputs_and_clashes(tmp_path):
  ins = [str(tmp_path / "in" / n) for n in ("a.png", "b.jpg")]
  assert inputs.folder_outputs(ins, str(tmp_path / "out"), ".png") == [
      str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "b.png")]
  with pytest.raises(UserError, match="would both be written to"):
    inputs.folder_outputs(ins + [str(tmp_path / "in" / "a.jpg")], str(tmp_path / "out"), ".png")
  os.makedirs(tmp_path / "in")
  for p in ins:
    open(p, "w").close()
  with pytest.raises(UserError, match="would overwrite an input"):
    inputs.folder_outputs(ins, str(tmp_path / "in"), ".png")
  assert inputs.folder_outputs(ins, str(tmp_path / "in"), ".jvc")[0].endswith("a.jvc")


def test_output_of_a_folder_must_be_a_folder(tmp_path):
  (tmp_path / "file.png").write_text("")
  for bad in ("file.png", "new.png", "new.jpg"):
    with pytest.raises(UserError, match="must be a folder too"):
      inputs.check_output_folder(str(tmp_path / bad), "photos", ".png")
  with pytest.raises(DataError, match="does not exist"):
    inputs.check_output_folder(str(tmp_path / "missing" / "out"), "photos", ".png")
  inputs.check_output_folder(str(tmp_path), "photos", ".png")  # exists
  inputs.check_output_folder(str(tmp_path / "new"), "photos", ".png")  # to be made
  assert not os.path.exists(tmp_path / "new")  # made only by make_folder
  inputs.make_folder(str(tmp_path / "new"))
  assert os.path.isdir(tmp_path / "new")


def test_for_each_reports_each_failure_once_and_goes_on(capsys):
  def fn(x):
    if x == "b":
      raise DataError("b: not a readable image (truncated)")
    if x == "c":
      raise PermissionError(13, "Permission denied", "c")
    if x == "d":
      raise UserError("the optimisation diverged")  # names no file: the label is added
    return x.upper()

  out = inputs.for_each(["a", "b", "c", "d", "e"], fn, command="enhance")
  assert out.results == {"a": "A", "e": "E"} and out.failed == ["b", "c", "d"]
  assert capsys.readouterr().err.splitlines() == [
      "jaxvision enhance: error: b: not a readable image (truncated)",
      "jaxvision enhance: error: c: Permission denied",
      "jaxvision enhance: error: d: the optimisation diverged"]
  with pytest.raises(UserError, match="^3 of 5 inputs failed$"):
    out.raise_if_failed()
  inputs.for_each(["a"], fn, command="x").raise_if_failed()  # nothing failed: no error
  with pytest.raises(DataError, match="truncated"):  # strict: the error itself, unchanged
    inputs.for_each(["b"], fn, command="x", strict=True)
  assert capsys.readouterr().err == ""


def test_for_each_does_not_swallow_bugs():
  with pytest.raises(ZeroDivisionError):
    inputs.for_each([1, 2], lambda x: 1 / 0, command="x")


def test_tuple_items_are_labelled_by_their_input(capsys):
  def fn(job):
    raise DataError(f"{job[0]}: bad")
  out = inputs.for_each([("in/a.png", "out/a.png")], fn, command="upscale")
  assert out.failed == ["in/a.png"]
  assert capsys.readouterr().err.strip() == "jaxvision upscale: error: in/a.png: bad"


def test_for_each_lanes_run_at_once_and_report_in_order(capsys):
  """Items in two lanes run in two threads at the same time (each waits for the other's
  first item), yet results, `say` lines and error lines come out in the items' order."""
  import threading
  started = [threading.Event(), threading.Event()]

  def fn(item):
    i, lane = item
    if i < 2:  # the first item of each lane: both must be running at once
      started[lane].set()
      assert started[1 - lane].wait(10), "lanes did not run at once"
    if i == 3:
      raise DataError(f"{item}: broken")
    inputs.say(f"done {i}")
    return i * 10

  items = [(0, 0), (1, 1), (2, 0), (3, 1), (4, 1)]
  out = inputs.for_each(items, fn, command="x", lanes=[lane for _, lane in items])
  cap = capsys.readouterr()
  assert list(out.results.values()) == [0, 10, 20, 40] and out.failed == ["3"]
  assert cap.out.split("\n")[:4] == ["done 0", "done 1", "done 2", "done 4"]
  assert cap.err.strip() == "jaxvision x: error: 3: (3, 1): broken"


def test_for_each_lanes_do_not_swallow_bugs():
  with pytest.raises(ZeroDivisionError):
    inputs.for_each([1, 0, 2], lambda x: 1 // x, command="x", lanes=[0, 1, 0])


def _tracked_reads(sizes, fail=()):
  """fn for ReadAhead: an array of sizes[i] bytes, raising for the items in `fail`, and
  a log of how many reads had started when each item was consumed."""
  import threading

  import numpy as np
  started = []
  lock = threading.Lock()

  def fn(i):
    with lock:
      started.append(i)
    if i in fail:
      raise UserError(f"item{i}: not readable")
    return np.zeros(sizes[i], np.uint8)
  return fn, started, lock


@pytest.mark.parametrize("window,budget", [(3, 1 << 30), (64, 2500)])
def test_read_ahead_is_ordered_and_bounded(window, budget):
  import time
  sizes = [1000] * 12
  fn, started, lock = _tracked_reads(sizes, fail={4})
  reader = inputs.ReadAhead(list(range(12)), fn, threads=2, window=window, budget=budget)
  time.sleep(0.2)  # give the threads every chance to run ahead
  with lock:
    ahead = len(started)
  # window items, or as many as fit the budget (the one that crosses it included)
  assert ahead == min(window, -(-budget // 1000))
  got = []
  for item, ok, result in reader:
    got.append((item, ok))
    with lock:
      assert len(started) <= item + 1 + min(window, -(-budget // 1000))
    assert ok == (item != 4) and (ok or "item4" in str(result))
  assert got == [(i, i != 4) for i in range(12)]


def test_read_ahead_reads_one_item_above_the_budget_alone():
  fn, started, _ = _tracked_reads([10, 5000, 10])
  reader = inputs.ReadAhead([0, 1, 2], fn, threads=2, budget=100)
  assert [r.nbytes for _, _, r in reader] == [10, 5000, 10]


def test_read_each_reports_failures_and_strict_raises(capsys):
  fn, _, _ = _tracked_reads([8] * 3, fail={1})
  out = inputs.Outcome(total=3)
  got = [name for name, _ in inputs.read_each(inputs.ReadAhead([0, 1, 2], fn), command="x",
                                              outcome=out)]
  assert got == ["0", "2"] and out.failed == ["1"]
  assert capsys.readouterr().err.strip() == "jaxvision x: error: 1: item1: not readable"
  with pytest.raises(UserError, match="item1"):
    list(inputs.read_each(inputs.ReadAhead([1], fn), command="x", strict=True))
  boom = lambda i: 1 / 0
  with pytest.raises(ZeroDivisionError):  # a bug is not an input's failure
    list(inputs.read_each(inputs.ReadAhead([0], boom), command="x"))
