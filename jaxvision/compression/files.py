"""The ``.jvc`` container: the one reader and writer of jaxvision's compressed files.

A versioned, CRC-protected file that stores a header (model, quality, image size,
channels, latent shapes and, from version 2, the CRC of the CDF tables) and the
entropy-coded strings of `coding.compress`. Byte layout: ``docs/jvc_format.md``.
Every field and the version logic are a contract: files written by any earlier
jaxvision keep reading. `header_for` is the one place that builds a header from a
coded image, `compress_image` the one path from an image to (header, strings).
"""
from __future__ import annotations

import errno
import os
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from jaxvision.core.errors import FileFormatError
from jaxvision.core.io import atomic_write

__all__ = ["JvcHeader", "JvcError", "write_jvc", "read_jvc", "header_for", "compress_image",
           "JVC_VERSION", "SUPPORTED_VERSIONS", "MAGIC"]

MAGIC = b"JVC\x00"
JVC_VERSION = 2  # 2 adds the CDF-table fingerprint; files without one are written as 1
SUPPORTED_VERSIONS = (1, 2)
MAX_SIDE = 1 << 16
MAX_LATENT_DIM = 1 << 20
MAX_NDIM = 8


class JvcError(FileFormatError):
  """Malformed, truncated or corrupted .jvc data (one-line message); a ValueError."""


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
  it over the target (`jaxvision.core.io.atomic_write`), so readers never see a
  partial file and a failure leaves the old file (if any) untouched and no temp
  file behind. The folder must exist (FileNotFoundError otherwise: a typo in an
  output folder is not a new folder). Given a binary file object, writes to it
  directly.
  """
  data = _serialize(header, strings)  # all validation before touching the disk
  if hasattr(path_or_file, "write"):
    path_or_file.write(data)
    return len(data)
  path = os.fspath(path_or_file)
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise FileNotFoundError(errno.ENOENT, f"output folder {folder} does not exist", path)
  atomic_write(path, lambda f: f.write(data))
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


def header_for(model_name: str, quality: int, height: int, width: int, channels: int,
               latent_shapes, tables_crc: int | None) -> JvcHeader:
  """The header of an image coded by `coding.compress` (the one place one is built):
  plain ints, latent shapes as tuples, `tables_crc` = `tables.tables_crc(tables)`
  (None writes a version-1 file, as jaxvision did before table fingerprints)."""
  return JvcHeader(model=model_name, quality=int(quality), height=int(height),
                   width=int(width), channels=int(channels),
                   latent_shapes=[tuple(int(d) for d in s) for s in latent_shapes],
                   tables_crc=None if tables_crc is None else int(tables_crc))


def compress_image(model, variables, tables, x, *, model_name: str, quality: int,
                   channels: int = 3, timings=None, info=None, what: str | None = None,
                   device=None) -> tuple[JvcHeader, list[bytes]]:
  """(header, strings) of a (1, H, W, 3) float image in [0, 1], ready for `write_jvc`:
  `coding.compress` and `header_for` (`channels` = 1 marks a grey source, which
  `jaxvision decompress` writes back as grey; `timings`, `info`, `what` (the source's name
  for errors), `device` as in `coding.compress`)."""
  from jaxvision.compression import coding
  from jaxvision.compression.tables import tables_crc
  _, h, w, _ = np.shape(x)
  for what_, v in (("height", h), ("width", w)):  # what the format cannot hold: before coding
    if not 1 <= v <= MAX_SIDE:
      raise JvcError(f"{what or 'image'}: {what_} {v} is more than a .jvc file holds "
                     f"(at most {MAX_SIDE} pixels)")
  strings, shapes = coding.compress(model, variables, tables, x, timings=timings, info=info,
                                    what=what, device=device)
  return header_for(model_name, quality, h, w, channels, shapes, tables_crc(tables)), strings
