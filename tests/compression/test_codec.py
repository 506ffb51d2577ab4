"""Entropy coding with integer CDF tables, and the .jvc container."""
import hashlib
import io
import os
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import hypothesis.extra.numpy as hnp

from jaxvision.compression import coding, files
from jaxvision.compression.files import JvcError, JvcHeader

INT32 = st.integers(-2**31, 2**31 - 1)


def make_tables(rng, n_tables, max_len=24, min_len=3):
  """Valid quantized CDFs (16-bit) from random pmfs: every frequency >= 1."""
  lengths = rng.integers(min_len, max_len + 1, n_tables)
  cdfs = np.zeros((n_tables, max_len), np.int32)
  for i, n in enumerate(lengths):
    k = n - 1  # symbols, incl. the escape
    p = rng.dirichlet(np.full(k, 0.5))
    f = 1 + np.floor(p * (65536 - k)).astype(np.int64)
    f[np.argmax(f)] += 65536 - f.sum()
    cdfs[i, 1:n] = np.cumsum(f)
    cdfs[i, n:] = 65536  # padding, ignored
  offsets = rng.integers(-10, 10, n_tables).astype(np.int32)
  return cdfs, lengths.astype(np.int32), offsets


def roundtrip(sym, idx, tables):
  data = coding.encode(sym, idx, *tables)
  out = coding.decode(data, idx, *tables)
  assert out.dtype == np.int32 and out.shape == np.shape(sym)
  np.testing.assert_array_equal(out, sym)
  return data


# ------------------------------------------------------------------ coding

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_tables=st.integers(1, 6),
       data=st.data())
def test_roundtrip_random_tables_and_escapes(seed, n_tables, data):
  rng = np.random.default_rng(seed)
  tables = make_tables(rng, n_tables)
  n = data.draw(st.integers(0, 200))
  # Mix in-range values, near-range escapes and arbitrary int32 extremes.
  elems = st.one_of(st.integers(-15, 35), INT32, st.sampled_from([-2**31, 2**31 - 1]))
  sym = data.draw(hnp.arrays(np.int32, n, elements=elems))
  idx = data.draw(hnp.arrays(np.int32, n, elements=st.integers(0, n_tables - 1)))
  roundtrip(sym, idx, tables)


def test_roundtrip_multidim_shape_and_extreme_offsets():
  rng = np.random.default_rng(1)
  cdfs, lengths, _ = make_tables(rng, 3)
  offsets = np.array([-2**31, 2**31 - 1, 0], np.int32)  # v - offset overflows int32
  sym = rng.integers(-2**31, 2**31, (4, 5, 6), dtype=np.int64).astype(np.int32)
  sym.flat[:6] = [-2**31, 2**31 - 1, -2**31 + 1, 2**31 - 2, 0, -1]
  idx = rng.integers(0, 3, sym.shape).astype(np.int32)
  roundtrip(sym, idx, (cdfs, lengths, offsets))


def test_empty_input():
  tables = make_tables(np.random.default_rng(2), 4)
  empty = np.zeros((0,), np.int32)
  assert roundtrip(empty, empty, tables) == b""
  out = coding.decode(b"", np.zeros((2, 0), np.int32), *tables)
  assert out.shape == (2, 0)


def test_single_table_and_minimal_table():
  # Length 3: one regular symbol + escape (smallest table constriction can model).
  cdfs = np.array([[0, 65535, 65536]], np.int32)
  tables = (cdfs, np.array([3], np.int32), np.array([7], np.int32))
  sym = np.array([7, 7, 7, 8, 6, -2**31, 2**31 - 1, 7], np.int32)
  roundtrip(sym, np.zeros_like(sym), tables)


def test_unused_tables_and_all_escapes():
  tables = make_tables(np.random.default_rng(3), 8)
  idx = np.full(50, 5, np.int32)
  sym = np.arange(50, dtype=np.int32) * 10**7 - 2**28
  roundtrip(sym, idx, tables)


def test_size_close_to_ideal():
  rng = np.random.default_rng(4)
  n_tables, n = 16, 200_000
  cdfs, lengths, offsets = make_tables(rng, n_tables, max_len=64)
  idx = rng.integers(0, n_tables, n).astype(np.int32)
  # Draw from each table's own distribution, excluding the escape symbol.
  sym = np.empty(n, np.int64)
  ideal = 0.0
  for t in range(n_tables):
    sel = idx == t
    f = np.diff(cdfs[t, :lengths[t]])[:-1].astype(np.float64)
    s = rng.choice(len(f), sel.sum(), p=f / f.sum())
    sym[sel] = s + offsets[t]
    ideal += -np.log2(f[s] / 65536).sum()
  data = roundtrip(sym.astype(np.int32), idx, (cdfs, lengths, offsets))
  bits = 8 * len(data)
  assert bits <= 1.01 * ideal + 64, (bits, ideal)
  assert bits >= ideal - 64  # sanity: cannot beat the model


def golden_inputs():
  """Integer-only construction (no RNG, whose streams numpy may change)."""
  n_tables, max_len = 8, 20
  cdfs = np.zeros((n_tables, max_len), np.int64)
  lengths = 4 + (np.arange(n_tables) * 5) % 17
  for t, n in enumerate(lengths):
    w = 1 + (np.arange(n - 1) * 7919 + t * 104729) % 997
    f = 1 + w * (65536 - (n - 1)) // w.sum()
    f[0] += 65536 - f.sum()
    cdfs[t, 1:n] = np.cumsum(f)
    cdfs[t, n:] = 65536
  k = np.arange(5000, dtype=np.int64)
  sym = (k * 2654435761) % 41 - 12
  sym[::97] = (k[::97] * 40503 * 65537) % 2**32 - 2**31  # far escapes
  idx = (k * 40503) % n_tables
  return (sym.astype(np.int32), idx.astype(np.int32),
          (cdfs.astype(np.int32), lengths.astype(np.int32),
           (np.arange(n_tables) - 3).astype(np.int32)))


def test_deterministic_and_golden():
  sym, idx, tables = golden_inputs()
  a = roundtrip(sym, idx, tables)
  b = coding.encode(sym.copy(), idx.copy(), *(np.array(t) for t in tables))
  assert a == b
  # Pinned bytes: catches any change in constriction's model quantization or in
  # our stream layout, either of which would make existing files undecodable.
  assert hashlib.sha256(a).hexdigest()[:16] == GOLDEN, hashlib.sha256(a).hexdigest()[:16]


GOLDEN = "94cb1cb6125d08fa"


def test_constriction_model_is_exact_integer_function_of_table():
  """The determinism argument in coding.py, checked: constriction's 24-bit model
  has left cumulatives floor(cdf[j] * (2^24 - n) / 2^16) + j exactly.

  Probe: encoding one symbol j into an empty AnsCoder leaves state = left[j].
  """
  rng = np.random.default_rng(8)
  cdfs, lengths, _ = make_tables(rng, 4, max_len=300)
  for t in range(4):
    model = coding._model(cdfs[t].astype(np.int64), lengths[t])
    n = lengths[t] - 1
    want = cdfs[t, :n].astype(np.int64) * (2**24 - n) // 2**16 + np.arange(n)
    got = []
    for j in range(n):
      c = coding.constriction.stream.stack.AnsCoder()
      c.encode_reverse(np.array([j], np.int32), model)
      w = c.get_compressed()
      got.append(int(w[0]) if w.size else 0)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad", [
    "first_not_zero", "not_increasing", "bad_total", "short_len", "bad_index"])
def test_invalid_inputs_raise(bad):
  cdfs, lengths, offsets = make_tables(np.random.default_rng(6), 2)
  sym, idx = np.zeros(4, np.int32), np.zeros(4, np.int32)
  if bad == "first_not_zero":
    cdfs[0, 0] = 1
  elif bad == "not_increasing":
    cdfs[1, 2] = cdfs[1, 1]
  elif bad == "bad_total":
    cdfs[0, lengths[0] - 1] = 65535
  elif bad == "short_len":
    lengths[0] = 2
  else:
    idx[0] = 2
  with pytest.raises(ValueError):
    coding.encode(sym, idx, cdfs, lengths, offsets)


def test_corrupt_stream_raises_value_error():
  tables = make_tables(np.random.default_rng(7), 2)
  sym = np.arange(10, dtype=np.int32)
  idx = np.zeros(10, np.int32)
  data = coding.encode(sym, idx, *tables)
  with pytest.raises(ValueError):
    coding.decode(data[:-1], idx, *tables)  # not whole words
  with pytest.raises(ValueError):
    coding.decode(data + data, idx, *tables)  # words left over


# ------------------------------------------------------------------ .jvc

def header(**kw):
  h = dict(model="bmshj2018-factorized", quality=3, height=512, width=768,
           channels=3, latent_shapes=[(192, 32, 48), (128, 8, 12)])
  h.update(kw)
  return JvcHeader(**h)


SMALL = (header(), [b"abc", b"", b"\x00\xff" * 5])


def small_file():
  buf = io.BytesIO()
  files.write_jvc(buf, *SMALL)
  return buf.getvalue()


headers = st.builds(
    JvcHeader,
    model=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                  max_size=255),
    quality=st.integers(0, 255),
    height=st.integers(1, 2**16), width=st.integers(1, 2**16),
    channels=st.integers(1, 255),
    latent_shapes=st.lists(st.lists(st.integers(1, 2**20), min_size=1, max_size=8)
                           .map(tuple), max_size=6))


@settings(max_examples=100, deadline=None)
@given(h=headers, strings=st.lists(st.binary(max_size=64), max_size=20))
def test_jvc_roundtrip(h, strings):
  buf = io.BytesIO()
  n = files.write_jvc(buf, h, strings)
  assert n == len(buf.getvalue())
  h2, s2 = files.read_jvc(buf.getvalue())
  assert h2 == h and s2 == strings


def test_jvc_roundtrip_path_and_bytes_written(tmp_path):
  p = tmp_path / "img.jvc"
  n = files.write_jvc(p, *SMALL)
  assert n == os.path.getsize(p)
  assert files.read_jvc(p) == SMALL
  assert files.read_jvc(str(p)) == SMALL
  with open(p, "rb") as f:
    assert files.read_jvc(f) == SMALL
  assert files.read_jvc(memoryview(p.read_bytes())) == SMALL
  assert os.listdir(tmp_path) == ["img.jvc"]


def test_jvc_every_truncation_raises():
  data = small_file()
  for k in range(len(data)):
    with pytest.raises(JvcError):
      files.read_jvc(data[:k])


def test_jvc_every_bit_flip_raises():
  data = bytearray(small_file())
  for i in range(len(data) * 8):
    data[i // 8] ^= 1 << (i % 8)
    with pytest.raises(JvcError):
      files.read_jvc(bytes(data))
    data[i // 8] ^= 1 << (i % 8)


def test_jvc_messages():
  data = small_file()
  for bad in (b"PNG\x00" + data[4:], b"X", b"\x89PNG"):
    with pytest.raises(JvcError, match=r"^not a \.jvc file \(bad magic\)$"):
      files.read_jvc(bad)
  with pytest.raises(JvcError, match=r"^truncated: magic needs 4 bytes, 3 left$"):
    files.read_jvc(b"JVC")
  with pytest.raises(JvcError, match=r"format version 7 is not supported \(this jaxvision "
                     r"reads version 1, 2\)"):
    files.read_jvc(data[:4] + b"\x07" + data[5:])
  bad_crc = data[:-1] + bytes([data[-1] ^ 1])
  with pytest.raises(JvcError, match="CRC mismatch: file is corrupted"):
    files.read_jvc(bad_crc)
  with pytest.raises(JvcError, match="unexpected bytes after the strings"):
    files.read_jvc(data + b"x")
  with pytest.raises(JvcError, match=r"^truncated: string 2 needs 10 bytes, 9 left$"):
    files.read_jvc(data[:-5] + data[-4:])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_jvc_random_bytes_raise_jvc_error(data):
  with pytest.raises(JvcError):
    files.read_jvc(data)
  with pytest.raises(JvcError):
    files.read_jvc(files.MAGIC + b"\x01" + data)
  with pytest.raises(JvcError):
    files.read_jvc(files.MAGIC + b"\x02" + data)


def test_jvc_huge_claimed_length_fails_fast():
  data = small_file()
  # Rewrite the length of string 0 to 4 GiB - 1 (lengths precede the strings).
  payload = 3 + 0 + 10
  lens_at = len(data) - 4 - payload - 3 * 4
  assert data[lens_at:lens_at + 4] == (3).to_bytes(4, "little")
  bad = data[:lens_at] + (2**32 - 1).to_bytes(4, "little") + data[lens_at + 4:]
  tracemalloc.start()
  t = time.perf_counter()
  with pytest.raises(JvcError, match="truncated: string 0 needs 4294967295 bytes"):
    files.read_jvc(bad)
  dt = time.perf_counter() - t
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert dt < 0.1 and peak < 1 << 20, (dt, peak)


def test_jvc_invalid_header_rejected_on_write(tmp_path):
  for bad in (header(model=""), header(model="caf\u00e9"), header(quality=256),
              header(height=0), header(width=2**16 + 1), header(channels=0),
              header(latent_shapes=[()]), header(latent_shapes=[(1,) * 9]),
              header(latent_shapes=[(2**20 + 1,)])):
    with pytest.raises(JvcError):
      files.write_jvc(tmp_path / "x.jvc", bad, [])
  with pytest.raises(JvcError):
    files.write_jvc(tmp_path / "x.jvc", header(), [b""] * 256)
  assert os.listdir(tmp_path) == []


def test_jvc_atomic_write_leaves_no_temp_file(tmp_path, monkeypatch):
  p = tmp_path / "img.jvc"
  files.write_jvc(p, *SMALL)
  before = p.read_bytes()

  def boom(src, dst):
    raise OSError("disk full")
  monkeypatch.setattr(files.os, "replace", boom)
  with pytest.raises(OSError, match="disk full"):
    files.write_jvc(p, header(quality=9), [b"new"])
  assert os.listdir(tmp_path) == ["img.jvc"]
  assert p.read_bytes() == before


def test_jvc_errors_are_user_errors_and_missing_folder_is_not_created(tmp_path):
  from jaxvision.core.errors import FileFormatError, UserError
  assert issubclass(JvcError, FileFormatError) and issubclass(JvcError, UserError)
  assert issubclass(JvcError, ValueError)  # what callers of older jaxvision catch
  with pytest.raises(FileNotFoundError, match="does not exist"):
    files.write_jvc(tmp_path / "no" / "img.jvc", *SMALL)
  assert os.listdir(tmp_path) == []


def test_header_for_builds_plain_int_headers():
  h = files.header_for("m", np.int64(3), np.int32(5), 7, 1, [np.array([1, 2, 3, 4])], 0xDEADBEEF)
  assert h == JvcHeader("m", 3, 5, 7, 1, [(1, 2, 3, 4)], tables_crc=0xDEADBEEF)
  assert all(type(v) is int for v in (h.quality, h.height, h.width, h.channels, h.tables_crc))
  assert all(type(d) is int for d in h.latent_shapes[0])
  assert files.header_for("m", 3, 5, 7, 3, [(1, 2)], None).tables_crc is None  # version 1


def test_jvc_version2_tables_crc_roundtrip_and_v1_still_read():
  h = JvcHeader("m", 3, 5, 7, 3, [(1, 2, 3, 4)], tables_crc=0xDEADBEEF)
  buf = io.BytesIO()
  files.write_jvc(buf, h, [b"abcd"])
  data = buf.getvalue()
  assert data[4] == 2
  h2, s2 = files.read_jvc(data)
  assert h2 == h and s2 == [b"abcd"]
  # Without a fingerprint the writer keeps the version-1 layout (4 bytes shorter).
  h.tables_crc = None
  buf = io.BytesIO()
  files.write_jvc(buf, h, [b"abcd"])
  assert buf.getvalue()[4] == 1 and len(buf.getvalue()) == len(data) - 4
  assert files.read_jvc(buf.getvalue())[0].tables_crc is None


def test_encode_sequence_chunks_decode_in_order():
  rng = np.random.default_rng(3)
  tables = make_tables(rng, 4)
  chunks = [(rng.integers(-30, 40, n).astype(np.int32), rng.integers(0, 4, n).astype(np.int32))
            for n in (5, 0, 17, 3)]
  data = coding.encode_sequence(chunks, *tables)
  assert coding.encode_sequence(chunks[:1], *tables) == coding.encode(*chunks[0], *tables)
  dec = coding.SequenceDecoder(data, *tables)
  for s, i in chunks:
    np.testing.assert_array_equal(dec.next(i), s)
  dec.finish()
  dec = coding.SequenceDecoder(data, *tables)
  dec.next(chunks[0][1])
  with pytest.raises(ValueError, match="left after"):
    dec.finish()
