"""Host-side entropy coding with integer CDF tables, and the ``.jvc`` container.

Pure numpy + ``constriction``; no JAX. Two halves:

* ``encode`` / ``decode``: ANS coding of int32 values, each with one of
  ``n_tables`` quantized 16-bit CDFs (the layout produced by the entropy
  bottleneck's ``update()``, as in CompressAI). Out-of-range values are escaped
  and coded exactly, never clipped.
* ``write_jvc`` / ``read_jvc``: the versioned, CRC-protected file format that
  stores a header and the coded strings. Byte layout: ``docs/jvc_format.md``.

Table layout (row ``i``, ``L = cdf_lengths[i]``): ``cdf[0] = 0``, strictly
increasing, ``cdf[L - 1] = 65536``. That is ``L - 1`` symbols; the last one,
``L - 2``, is the escape. A value ``v`` is coded directly as symbol
``v - offsets[i]`` when that lies in ``[0, L - 3]``, and escaped otherwise.

Escape scheme (all with a uniform 16-ary "bypass" model): the excess ``d``
below/above the direct range is folded to ``r >= 0`` (below: ``r = 2|d| - 1``,
odd; above: ``r = 2 (d - (L - 2))``, even), then coded as one nibble
``n - 1`` (``n`` = number of 4-bit groups of ``r``, at most 9 because ``r <
2^33`` for int32 inputs, so a single nibble suffices and no unary code is
needed) followed by the ``n`` groups, least significant first.

Determinism: each table is turned into ``constriction``'s
``Categorical(freqs / 65536, perfect=False)`` with float64 probabilities.
constriction 0.5 quantizes these to its 24-bit fixed point as
``left[j] = floor(cdf[j] / 2^16 * (2^24 - n)) + j`` (``fast_quantized_cdf`` in
``src/stream/model/categorical.rs``). With 16-bit integer CDFs every one of
those float64 operations is exact (dyadic values, < 2^41 significant bits),
so the 24-bit model is an integer function of the table: no rounding happens,
hence no machine/compiler (FMA, SIMD) can change it. ``perfect=True`` would
instead run a float optimisation loop with ``log1p``, which we avoid.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field

import numpy as np

import constriction

__all__ = ["encode", "decode", "encode_sequence", "SequenceDecoder", "JvcHeader", "JvcError", "write_jvc",
           "read_jvc", "CDF_PRECISION", "JVC_VERSION"]

CDF_PRECISION = 16
_TOTAL = 1 << CDF_PRECISION
_NIBBLE = constriction.stream.model.Uniform(16)  # integer-exact model


# --------------------------------------------------------------------------
# Entropy coding
# --------------------------------------------------------------------------

def _check_tables(cdfs, cdf_lengths, offsets):
  cdfs = np.asarray(cdfs)
  cdf_lengths = np.asarray(cdf_lengths)
  offsets = np.asarray(offsets)
  if cdfs.ndim != 2 or not np.issubdtype(cdfs.dtype, np.integer):
    raise ValueError(f"cdfs must be a 2-D integer array, got {cdfs.dtype} {cdfs.shape}")
  n, max_len = cdfs.shape
  if cdf_lengths.shape != (n,) or offsets.shape != (n,):
    raise ValueError(f"cdf_lengths and offsets must have shape ({n},), got "
                     f"{cdf_lengths.shape} and {offsets.shape}")
  cdfs = cdfs.astype(np.int64)
  lengths = cdf_lengths.astype(np.int64)
  if np.any(lengths < 3) or np.any(lengths > max_len):
    raise ValueError(f"cdf_lengths must be in [3, {max_len}] (one regular symbol + escape)")
  # One vectorised validity check over all rows (padding beyond L is masked).
  cols = np.arange(max_len)
  inside = cols[None, :] < lengths[:, None]
  steps = np.diff(cdfs, axis=1)
  if (np.any(cdfs[:, 0] != 0)
      or np.any(cdfs[np.arange(n), lengths - 1] != _TOTAL)
      or np.any((steps < 1) & inside[:, 1:])):
    raise ValueError("every cdf row must start at 0, increase strictly and end at 65536")
  return cdfs, lengths, offsets.astype(np.int64)


def _model(cdf_row, length):
  # float64 of integer frequencies / 2^16 is exact; see module docstring for why
  # constriction's quantization of it is then exact too.
  freqs = np.diff(cdf_row[:length]).astype(np.float64) / _TOTAL
  return constriction.stream.model.Categorical(freqs, perfect=False)


def _group(indexes, n_tables):
  """Stable permutation sorting symbols by table, and per-table counts."""
  if indexes.size and (indexes.min() < 0 or indexes.max() >= n_tables):
    raise ValueError(f"indexes must be in [0, {n_tables})")
  order = np.argsort(indexes, kind="stable")
  counts = np.bincount(indexes, minlength=n_tables)
  return order, counts


def _check_symbols(symbols, indexes):
  symbols = np.asarray(symbols)
  indexes = np.asarray(indexes)
  if symbols.shape != indexes.shape:
    raise ValueError(f"symbols {symbols.shape} and indexes {indexes.shape} differ in shape")
  if symbols.size and not np.issubdtype(symbols.dtype, np.integer):
    raise ValueError(f"symbols must be integers, got {symbols.dtype}")
  if symbols.size and (symbols.min() < -2**31 or symbols.max() > 2**31 - 1):
    raise ValueError("symbols must fit in int32")
  return symbols, indexes


class _Models:
  """constriction models of checked tables, built once per row on first use."""

  def __init__(self, cdfs, cdf_lengths, offsets):
    self.cdfs, self.lengths, self.offsets = _check_tables(cdfs, cdf_lengths, offsets)
    self._cache = {}

  def __call__(self, t):
    m = self._cache.get(t)
    if m is None:
      m = self._cache[t] = _model(self.cdfs[t], self.lengths[t])
    return m


def _push(coder, symbols, indexes, models: _Models) -> None:
  """Pushes one chunk so that `_pop` with the same indexes reads it back first."""
  lengths, offsets = models.lengths, models.offsets
  idx = indexes.ravel().astype(np.int64)
  order, counts = _group(idx, len(lengths))
  tab = idx[order]
  # int64 so that v - offset cannot wrap for extreme int32 inputs.
  d = symbols.ravel().astype(np.int64)[order] - offsets[tab]
  esc_sym = lengths[tab] - 2
  low, high = d < 0, d >= esc_sym
  sym = np.where(low | high, esc_sym, d).astype(np.int32)

  # Escapes, in decode order (table-sorted order). Fold to r >= 0 and split
  # into nibbles, least significant first.
  r = np.where(low, -2 * d - 1, 2 * (d - esc_sym))[low | high]
  n_groups = np.ones(r.shape, np.int64)
  for k in range(1, 9):  # r < 2^33 needs at most 9 nibbles
    n_groups += r >= (1 << (4 * k))
  shifts = 4 * np.arange(9)
  nib = (r[:, None] >> shifts[None, :]) & 15
  nibbles = nib[np.arange(9)[None, :] < n_groups[:, None]].astype(np.int32)

  # ANS is a stack: push in reverse of the decode order
  # (tables 0..n-1, then group counts, then nibbles).
  if nibbles.size:
    coder.encode_reverse(nibbles, _NIBBLE)
    coder.encode_reverse((n_groups - 1).astype(np.int32), _NIBBLE)
  ends = np.cumsum(counts)
  for t in np.flatnonzero(counts)[::-1]:
    coder.encode_reverse(sym[ends[t] - counts[t]:ends[t]], models(t))


def _pop(coder, indexes, models: _Models) -> np.ndarray:
  """Reads one chunk pushed by `_push`; ValueError on a stream that cannot hold it."""
  lengths, offsets = models.lengths, models.offsets
  idx = indexes.ravel().astype(np.int64)
  order, counts = _group(idx, len(lengths))
  tab = idx[order]
  try:
    sym = np.empty(idx.size, np.int64)
    ends = np.cumsum(counts)
    for t in np.flatnonzero(counts):
      sym[ends[t] - counts[t]:ends[t]] = coder.decode(models(t), int(counts[t]))
    esc_sym = lengths[tab] - 2
    escaped = sym == esc_sym
    n_esc = int(escaped.sum())
    d = sym.copy()
    if n_esc:
      n_groups = coder.decode(_NIBBLE, n_esc).astype(np.int64) + 1
      if n_groups.max() > 9:  # the encoder never writes more (r < 2^36)
        raise ValueError("corrupt entropy-coded stream: escape longer than 9 nibbles")
      nib = coder.decode(_NIBBLE, int(n_groups.sum())).astype(np.int64)
      # Reassemble each escape's nibbles: position of each nibble in its value.
      starts = np.cumsum(n_groups) - n_groups
      pos = np.arange(nib.size) - np.repeat(starts, n_groups)
      r = np.zeros(n_esc, np.int64)
      np.add.at(r, np.repeat(np.arange(n_esc), n_groups), nib << (4 * pos))
      d[escaped] = np.where(r & 1, -((r + 1) // 2), r // 2 + esc_sym[escaped])
  except ValueError:
    raise
  except Exception as e:  # constriction raises assorted types on bad streams
    raise ValueError(f"corrupt entropy-coded stream: {e}") from None
  v = d + offsets[tab]
  if v.size and (v.min() < -2**31 or v.max() > 2**31 - 1):
    raise ValueError("corrupt entropy-coded stream: decoded value outside int32")
  out = np.empty(idx.size, np.int32)
  out[order] = v
  return out.reshape(indexes.shape)


def _words(data: bytes) -> np.ndarray:
  if len(data) % 4:
    raise ValueError(f"compressed length {len(data)} is not a multiple of 4 bytes")
  return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def encode(symbols, indexes, cdfs, cdf_lengths, offsets) -> bytes:
  """Entropy-codes int32 ``symbols``; ``indexes`` (same shape) picks each one's table.

  Returns the ANS stream as little-endian 32-bit words. Decoding needs the same
  ``indexes`` and tables (the shape is not stored).
  """
  symbols, indexes = _check_symbols(symbols, indexes)
  coder = constriction.stream.stack.AnsCoder()
  _push(coder, symbols, indexes, _Models(cdfs, cdf_lengths, offsets))
  return coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, indexes, cdfs, cdf_lengths, offsets) -> np.ndarray:
  """Inverse of ``encode``: int32 array of ``indexes.shape``.

  Raises ValueError on inconsistent tables or a stream that does not decode
  cleanly. ANS has no integrity check of its own: corruption is only caught
  when it leaves words over or yields a value outside int32 (the .jvc CRC is
  the real guard).
  """
  indexes = np.asarray(indexes)
  models = _Models(cdfs, cdf_lengths, offsets)
  dec = SequenceDecoder(data, models)
  out = dec.next(indexes)
  dec.finish()
  return out


def encode_sequence(chunks, cdfs, cdf_lengths, offsets) -> bytes:
  """One ANS stream of several (symbols, indexes) chunks, each coded as by ``encode``.

  For autoregressive models: the decoder needs chunk k's values before it can
  compute chunk k+1's indexes, so it reads chunks one at a time with
  `SequenceDecoder`. ``encode_sequence([(s, i)], ...)`` equals ``encode(s, i, ...)``.
  """
  models = _Models(cdfs, cdf_lengths, offsets)
  chunks = [_check_symbols(s, i) for s, i in chunks]
  coder = constriction.stream.stack.AnsCoder()
  for s, i in reversed(chunks):  # a stack: the first chunk is pushed last
    _push(coder, s, i, models)
  return coder.get_compressed().astype("<u4").tobytes()


class SequenceDecoder:
  """Reads the chunks of `encode_sequence` in order: ``next(indexes)`` per chunk,
  then ``finish()``, which raises ValueError when words are left over."""

  def __init__(self, data: bytes, cdfs, cdf_lengths=None, offsets=None):
    self.models = cdfs if isinstance(cdfs, _Models) else _Models(cdfs, cdf_lengths, offsets)
    words = _words(data)
    try:
      self.coder = constriction.stream.stack.AnsCoder(words)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"corrupt entropy-coded stream: {e}") from None

  def next(self, indexes) -> np.ndarray:
    return _pop(self.coder, np.asarray(indexes), self.models)

  def finish(self) -> None:
    if not self.coder.is_empty():
      raise ValueError("corrupt entropy-coded stream: data left after the last symbol")


# --------------------------------------------------------------------------
# .jvc container
# --------------------------------------------------------------------------

MAGIC = b"JVC\x00"
JVC_VERSION = 2  # 2 adds the CDF-table fingerprint; files without one are written as 1
SUPPORTED_VERSIONS = (1, 2)
MAX_SIDE = 1 << 16
MAX_LATENT_DIM = 1 << 20
MAX_NDIM = 8


class JvcError(ValueError):
  """Malformed, truncated or corrupted .jvc data (one-line message)."""


@dataclass
class JvcHeader:
  model: str
  quality: int
  height: int
  width: int
  channels: int
  latent_shapes: list[tuple[int, ...]] = field(default_factory=list)
  # CRC32 of the CDF tables that coded the strings (version 2); None: version 1 file.
  tables_crc: int | None = None


def _check_header(h: JvcHeader):
  """The limits the reader enforces, applied at write time too, so whatever we
  write we can read back."""
  m = h.model
  if (not isinstance(m, str) or not 1 <= len(m) <= 255
      or not all(0x20 <= ord(c) <= 0x7E for c in m)):
    raise JvcError(f"model name must be 1-255 printable ASCII characters, got {m!r}")
  for name, val, lo, hi in (("quality", h.quality, 0, 255),
                            ("height", h.height, 1, MAX_SIDE),
                            ("width", h.width, 1, MAX_SIDE),
                            ("channels", h.channels, 1, 255)):
    if not isinstance(val, (int, np.integer)) or not lo <= val <= hi:
      raise JvcError(f"{name} must be an integer in [{lo}, {hi}], got {val!r}")
  if h.tables_crc is not None and not (
      isinstance(h.tables_crc, (int, np.integer)) and 0 <= h.tables_crc <= 0xFFFFFFFF):
    raise JvcError(f"tables_crc must be a u32 or None, got {h.tables_crc!r}")
  if len(h.latent_shapes) > 255:
    raise JvcError(f"at most 255 latent tensors, got {len(h.latent_shapes)}")
  for i, shape in enumerate(h.latent_shapes):
    shape = tuple(shape)
    if not 1 <= len(shape) <= MAX_NDIM or not all(
        isinstance(s, (int, np.integer)) and 1 <= s <= MAX_LATENT_DIM for s in shape):
      raise JvcError(f"latent {i}: shape {shape} needs 1-{MAX_NDIM} dims, each in "
                     f"[1, {MAX_LATENT_DIM}]")


def _serialize(header: JvcHeader, strings) -> bytes:
  _check_header(header)
  strings = [bytes(s) for s in strings]
  if len(strings) > 255:
    raise JvcError(f"at most 255 strings, got {len(strings)}")
  if any(len(s) > 0xFFFFFFFF for s in strings):
    raise JvcError("a string is longer than 2^32 - 1 bytes")
  name = header.model.encode("ascii")
  version = 1 if header.tables_crc is None else 2
  parts = [MAGIC, struct.pack("<BB", version, len(name)), name,
           struct.pack("<BIIB", header.quality, header.height, header.width,
                       header.channels)]
  if version == 2:
    parts.append(struct.pack("<I", header.tables_crc))
  parts.append(struct.pack("<B", len(header.latent_shapes)))
  for shape in header.latent_shapes:
    parts.append(struct.pack(f"<B{len(shape)}I", len(shape), *shape))
  parts.append(struct.pack(f"<B{len(strings)}I", len(strings), *map(len, strings)))
  parts.extend(strings)
  body = b"".join(parts)
  return body + struct.pack("<I", zlib.crc32(body))


def write_jvc(path_or_file, header: JvcHeader, strings: list[bytes]) -> int:
  """Writes a .jvc file; returns the number of bytes written.

  Given a path, writes a temp file in the same directory and ``os.replace``s
  it over the target, so readers never see a partial file and a failure leaves
  the old file (if any) untouched and no temp file behind. Given a binary file
  object, writes to it directly.
  """
  data = _serialize(header, strings)  # all validation before touching the disk
  if hasattr(path_or_file, "write"):
    path_or_file.write(data)
    return len(data)
  path = os.fspath(path_or_file)
  d, base = os.path.split(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{base}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
  return len(data)


class _Reader:
  """Bounds-checked cursor: every read is checked against what is left, so a
  corrupt length fails before anything is allocated."""

  def __init__(self, buf: memoryview):
    self.buf, self.pos = buf, 0

  def left(self):
    return len(self.buf) - self.pos

  def take(self, n, what):
    if n > self.left():
      raise JvcError(f"truncated: {what} needs {n} bytes, {self.left()} left")
    out = self.buf[self.pos:self.pos + n]
    self.pos += n
    return out

  def unpack(self, fmt, what):
    return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def read_jvc(path_or_bytes) -> tuple[JvcHeader, list[bytes]]:
  """Parses and validates a .jvc file (path, bytes-like, or binary file object).

  Raises JvcError with a one-line reason for any malformed input; the CRC is
  checked last, after the structure (so a bad length reports as truncation).
  I/O errors such as a missing file propagate as OSError.
  """
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    data = path_or_bytes
  elif hasattr(path_or_bytes, "read"):
    data = path_or_bytes.read()
  else:
    with open(path_or_bytes, "rb") as f:
      data = f.read()
  r = _Reader(memoryview(data).cast("B"))

  head = bytes(r.buf[:len(MAGIC)])
  if not MAGIC.startswith(head):
    raise JvcError("not a .jvc file (bad magic)")
  r.take(len(MAGIC), "magic")  # a proper prefix of the magic reads as truncated
  (version,) = r.unpack("<B", "format version")
  if version not in SUPPORTED_VERSIONS:
    raise JvcError(f"format version {version} is not supported (this jaxvision reads "
                   f"version {', '.join(map(str, SUPPORTED_VERSIONS))})")
  (name_len,) = r.unpack("<B", "model name length")
  name = bytes(r.take(name_len, "model name"))
  if not name or not all(0x20 <= c <= 0x7E for c in name):
    raise JvcError(f"bad model name {name!r}: must be 1-255 printable ASCII characters")
  quality, height, width, channels = r.unpack("<BIIB", "header")
  tables_crc = r.unpack("<I", "tables CRC")[0] if version >= 2 else None
  (n_lat,) = r.unpack("<B", "latent count")
  for what, val, lo, hi in (("height", height, 1, MAX_SIDE), ("width", width, 1, MAX_SIDE),
                            ("channels", channels, 1, 255)):
    if not lo <= val <= hi:
      raise JvcError(f"bad {what} {val}: must be in [{lo}, {hi}]")
  shapes = []
  for i in range(n_lat):
    (ndim,) = r.unpack("<B", f"latent {i} ndim")
    if not 1 <= ndim <= MAX_NDIM:
      raise JvcError(f"bad latent {i} ndim {ndim}: must be in [1, {MAX_NDIM}]")
    dims = r.unpack(f"<{ndim}I", f"latent {i} dims")
    if not all(1 <= s <= MAX_LATENT_DIM for s in dims):
      raise JvcError(f"bad latent {i} shape {dims}: dims must be in [1, {MAX_LATENT_DIM}]")
    shapes.append(tuple(dims))
  (n_str,) = r.unpack("<B", "string count")
  lens = r.unpack(f"<{n_str}I", "string lengths")
  # Check the lengths against the remaining bytes before slicing anything.
  for i, n in enumerate(lens):
    if n > r.left() - 4:
      raise JvcError(f"truncated: string {i} needs {n} bytes, {max(r.left() - 4, 0)} left")
    r.pos += n
  if r.left() != 4:
    raise JvcError(f"truncated: CRC needs 4 bytes, {r.left()} left" if r.left() < 4
                   else f"{r.left() - 4} unexpected bytes after the strings")
  crc_pos = r.pos
  (crc,) = r.unpack("<I", "CRC")
  if zlib.crc32(r.buf[:crc_pos]) != crc:
    raise JvcError("CRC mismatch: file is corrupted")
  strings, p = [], crc_pos - sum(lens)
  for n in lens:
    strings.append(bytes(r.buf[p:p + n]))
    p += n
  return (JvcHeader(name.decode("ascii"), quality, height, width, channels, shapes, tables_crc),
          strings)
