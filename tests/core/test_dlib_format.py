"""jaxvision.core.dlib_format against a tiny writer of dlib's format: integers, floats,
strings and matrices round-trip (hypothesis), the vectorised integer run decodes what the
one-at-a-time reader decodes, and truncated or bit-flipped bytes are a FileFormatError
(never another exception, never a hang)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision.core import dlib_format as D
from jaxvision.core.errors import FileFormatError
from tests.landmarks import dlib_writer as Wr

ints = st.integers(-(2**63 - 1), 2**63 - 1)
f32 = st.floats(width=32, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(ints, max_size=40))
def test_ints_round_trip(values):
  data = b"".join(Wr.int_(v) for v in values)
  r = D.DlibReader(data)
  assert [r.int() for _ in values] == values
  r.expect_end()
  run = D.DlibReader(data).int_run()
  assert run.values.tolist() == values
  offsets = np.cumsum([0] + [len(Wr.int_(v)) for v in values])[:-1]
  assert run.offsets.tolist() == offsets.tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(f32, max_size=30))
def test_floats_round_trip(values):
  data = b"".join(Wr.float_(v) for v in values)
  got = D.DlibReader(data).floats(len(values))
  np.testing.assert_array_equal(got, np.float32(values))
  run = D.DlibReader(data).int_run()
  np.testing.assert_array_equal(run.floats(len(values), "x"), np.float32(values))


def test_special_floats_and_doubles():
  vals = [np.inf, -np.inf, 0.0, -0.0, 1e-30, 3.5]
  data = b"".join(Wr.float_(v) for v in vals) + Wr.float_(np.nan)
  got = D.DlibReader(data).floats(7)
  np.testing.assert_array_equal(got[:6], np.float32(vals))
  assert np.isnan(got[6])
  # a double written with 53 mantissa bits reads back to the nearest float32
  assert D.DlibReader(Wr.float_(0.1, digits=53)).float() == pytest.approx(0.1, rel=1e-15)


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=50), st.integers(1, 5), st.integers(1, 4), st.data())
def test_string_and_matrix_round_trip(s, nr, nc, data):
  a = np.array(data.draw(st.lists(f32, min_size=nr * nc, max_size=nr * nc)), np.float32)
  a = a.reshape(nr, nc)
  b = s.encode("latin-1", "replace")
  blob = Wr.int_(len(b)) + b + Wr.matrix(a) + b"1"  # a bool: one ASCII character
  r = D.DlibReader(blob)
  assert r.string() == b.decode("latin-1")
  np.testing.assert_array_equal(r.matrix(rows=nr, cols=nc), a)
  assert r.bool() is True
  r.expect_end()


def _blob():
  rng = np.random.default_rng(0)
  return b"".join(Wr.int_(v) for v in rng.integers(-10**9, 10**9, 200)) + b"".join(
      Wr.float_(v) for v in rng.normal(size=100))


def test_truncated_is_refused():
  blob = _blob()
  for cut in (1, 2, 7, len(blob) // 2, len(blob) - 1):
    with pytest.raises(FileFormatError, match="truncated|past the end"):
      D.DlibReader(blob[:cut], "x.dat").int_run()
  r = D.DlibReader(Wr.int_(5) + b"ab", "x.dat")
  with pytest.raises(FileFormatError, match="x.dat"):
    r.string()


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 7))
def test_bit_flips_refused_or_decoded(pos, bit):
  """A flipped bit either leaves a valid integer stream (decoded identically by both
  readers) or is refused with a FileFormatError; nothing else escapes."""
  blob = bytearray(_blob())
  blob[pos % len(blob)] ^= 1 << bit
  blob = bytes(blob)
  try:
    run = D.DlibReader(blob).int_run()
  except FileFormatError:
    r = D.DlibReader(blob)
    with pytest.raises(FileFormatError):
      while r.left():
        r.int()
    return
  r = D.DlibReader(blob)
  assert [r.int() for _ in range(len(run.values))] == run.values.tolist()


def test_foreign_control_bytes_refused():
  for data in (b"\x70\x00", b"\x09" + bytes(9), b"%PDF-1.4 hello"):
    with pytest.raises(FileFormatError, match="control byte|truncated|past the end"):
      D.DlibReader(data, "foreign.bin").int_run()
