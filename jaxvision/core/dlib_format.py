"""A safe reader of dlib's serialisation (`dlib/serialize.h`), for its `.dat` model files.

dlib writes its models (the face-recognition ResNet, the ERT shape predictors) with its own
binary format; no code runs when it is read, and this module reads it with nothing but byte
arithmetic. Two families use it (recognition and landmarks), so it lives in core.

The primitives, as `dlib/serialize.h` writes them:
  - an integer is a control byte and up to 8 little-endian bytes: the control byte's low
    four bits give the number of bytes that follow (0 for the value 0), bit 0x80 is the
    sign; an unsigned type never has the sign bit.
  - a float or double is two integers, an int64 mantissa and an int16 exponent, the value
    being mantissa * 2**exponent (exponent 32000 / 32001 / 32002: +inf / -inf / NaN).
    dlib's older ASCII float format (a control byte with any of the bits 0x70 set) is not
    read: no released model file uses it.
  - a std::string is its length (an integer) and its bytes; a std::vector its length and
    its elements; a dlib matrix `-rows, -cols` (negated: the format since dlib 18) and its
    elements in row-major order, each serialised as above.
  - a DNN tensor (`dlib/cuda/tensor.h`) is `version (2), num_samples, k, nr, nc` as integers
    and then its floats as raw little-endian float32.

Every length is checked against the bytes that are left before anything is allocated, so
that a damaged or foreign file is a `FileFormatError` naming the file and the offset, never
a huge allocation or a crash.
"""
from __future__ import annotations

import numpy as np

from jaxvision.core.errors import FileFormatError

INF_EXPONENT, NINF_EXPONENT, NAN_EXPONENT = 32000, 32001, 32002


class DlibReader:
  """Reads dlib's primitives from `data` (bytes) in order; `name` appears in errors."""

  def __init__(self, data: bytes, name: str = "dlib file"):
    self.data = memoryview(data)
    self.pos = 0
    self.name = name

  # ------------------------------------------------------------ errors and bounds
  def error(self, what: str) -> FileFormatError:
    return FileFormatError(f"{self.name}: not a valid dlib model file ({what} at byte "
                           f"{self.pos} of {len(self.data)})")

  def left(self) -> int:
    return len(self.data) - self.pos

  def need(self, n: int, what: str) -> None:
    if n < 0 or n > self.left():
      raise self.error(f"{what} needs {n} bytes, {self.left()} left (truncated?)")

  def count(self, what: str, min_bytes_each: int = 1, limit: int | None = None) -> int:
    """An unsigned length whose elements need at least `min_bytes_each` bytes each."""
    n = self.uint(what)
    if limit is not None and n > limit:
      raise self.error(f"{what} {n} is more than {limit}")
    if n * min_bytes_each > self.left():
      raise self.error(f"{what} {n} is more than the file can hold")
    return n

  # ------------------------------------------------------------ primitives
  def int(self, what: str = "integer", bits: int = 64) -> int:
    self.need(1, what)
    c = self.data[self.pos]
    size = c & 0x0F
    if c & 0x70 or size > bits // 8:
      raise self.error(f"{what}: control byte {c:#04x}")
    self.need(1 + size, what)
    v = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
    self.pos += 1 + size
    return -v if c & 0x80 else v

  def uint(self, what: str = "unsigned integer", bits: int = 64) -> int:
    self.need(1, what)
    if self.data[self.pos] & 0x80:
      raise self.error(f"{what}: negative where an unsigned value belongs")
    return self.int(what, bits)

  def float(self, what: str = "float") -> float:
    m = self.int(what + " mantissa")
    e = self.int(what + " exponent", bits=16)
    if e == INF_EXPONENT:
      return float("inf")
    if e == NINF_EXPONENT:
      return float("-inf")
    if e == NAN_EXPONENT:
      return float("nan")
    return float(np.ldexp(np.float64(m), e))

  def string(self, what: str = "string", limit: int = 1 << 16) -> str:
    n = self.count(what + " length", 1, limit)
    s = bytes(self.data[self.pos:self.pos + n])
    self.pos += n
    try:
      return s.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes any bytes; kept for clarity
      raise self.error(what) from None

  def bool(self, what: str = "bool") -> bool:
    # dlib serialises bool as one integer (0 or 1)
    v = self.int(what)
    if v not in (0, 1):
      raise self.error(f"{what}: {v} is not 0 or 1")
    return bool(v)

  def floats(self, n: int, what: str = "floats") -> np.ndarray:
    """`n` serialised floats (mantissa/exponent pairs) as a float32 array."""
    if 2 * n > self.left():
      raise self.error(f"{what}: {n} values are more than the file can hold")
    out = np.empty(n, np.float64)
    for i in range(n):
      out[i] = self.float(what)
    return out.astype(np.float32)

  def matrix(self, what: str = "matrix", rows: int | None = None,
             cols: int | None = None) -> np.ndarray:
    """A dlib matrix of floats as a float32 (rows, cols) array; `rows`/`cols` are checked
    when given."""
    nr, nc = self.int(what + " rows"), self.int(what + " cols")
    if nr > 0 or nc > 0:
      raise self.error(f"{what}: the pre-2013 matrix format (positive dimensions)")
    nr, nc = -nr, -nc
    if (rows is not None and nr != rows) or (cols is not None and nc != cols):
      raise self.error(f"{what}: shape ({nr}, {nc}), expected ({rows}, {cols})")
    return self.floats(nr * nc, what).reshape(nr, nc)

  def raw_float32(self, n: int, what: str = "tensor data") -> np.ndarray:
    self.need(4 * n, what)
    a = np.frombuffer(self.data, "<f4", n, self.pos).astype(np.float32)
    self.pos += 4 * n
    return a

  def tensor(self, what: str = "tensor") -> np.ndarray:
    """A DNN tensor as a float32 (num_samples, k, nr, nc) array."""
    version = self.int(what + " version")
    if version != 2:
      raise self.error(f"{what}: version {version}, expected 2")
    dims = tuple(self.uint(what + " dimension") for _ in range(4))
    n = int(np.prod(dims, dtype=np.int64)) if all(d >= 0 for d in dims) else -1
    return self.raw_float32(n, what).reshape(dims)

  def expect_end(self) -> None:
    if self.left():
      raise self.error(f"{self.left()} unread bytes after the model")


def read_file(path: str, limit: int = 1 << 30) -> DlibReader:
  """A DlibReader over the file at `path` (refused above `limit` bytes)."""
  import os
  try:
    size = os.path.getsize(path)
    if size > limit:
      raise FileFormatError(f"{path}: {size} bytes is larger than any dlib model file")
    with open(path, "rb") as f:
      return DlibReader(f.read(), path)
  except OSError as e:
    raise FileFormatError(f"{path}: cannot read ({e.strerror or e})") from None
