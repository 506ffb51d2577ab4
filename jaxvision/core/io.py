"""Files in and out: one atomic writer, one image reader, one PNG writer.

  atomic_write(path, write)       temp file in the same folder, fsync, rename: readers see no
                                  file or a whole one, and an error leaves nothing behind
  read_image(path) -> (rgb, alpha)  any Pillow image -> (H,W,3) uint8 plus its alpha or None
  load_image_file(path)           the RGB part only (alpha composited on white)
  write_png(path, array)          atomic; a missing output folder is a one-line error
  to_uint8(x)                     float image in [0, 1] -> uint8, rounded
  IMAGE_EXTENSIONS                what counts as an image file in a folder

Every failure a user can cause is a `DataError` naming the file.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxvision.core.errors import DataError, OutputError, UserError

# What counts as an image file in a folder (folder: datasets, folders given to commands).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                              ".ppm", ".pgm", ".pbm", ".pnm"})

# --------------------------------------------------------------------------------------------
# Pixels (reading)
# --------------------------------------------------------------------------------------------

def _to_uint8(a: np.ndarray) -> np.ndarray:
  """Colour channels of any supported dtype -> uint8 (no alpha handling)."""
  if a.dtype == np.uint8:
    return a
  if a.dtype == np.bool_:
    return a.astype(np.uint8) * np.uint8(255)
  if a.dtype == np.uint16:
    # round(v / 257): the exact inverse of the usual 8->16-bit expansion v * 257 (65535 -> 255).
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
  if np.issubdtype(a.dtype, np.floating):
    f = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  raise DataError(f"unsupported image dtype {a.dtype} (expected uint8, uint16, bool or float)")


def _to_unit_float(a: np.ndarray) -> np.ndarray:
  if a.dtype == np.uint8:
    return a.astype(np.float32) / 255.0
  if a.dtype == np.uint16:
    return a.astype(np.float32) / 65535.0
  if a.dtype == np.bool_:
    return a.astype(np.float32)
  if np.issubdtype(a.dtype, np.floating):
    f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(f, 0.0, 1.0)
  raise DataError(f"unsupported image dtype {a.dtype} (expected uint8, uint16, bool or float)")


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """(H,W) / (H,W,1) grey, (H,W,2) grey+alpha, (H,W,3) RGB, (H,W,4) RGBA -> (H,W,3) uint8.

  dtypes: uint8 as is; uint16 -> round(v/257) (65535 -> 255); bool -> {0,255};
  float -> clip to [0,1] * 255, rounded (NaN -> 0).  Alpha is composited on a white background
  (out = c*a + 1*(1-a), in [0,1] floats) so transparent regions become white, not black noise.
  """
  a = np.asarray(image)
  if a.ndim == 2:
    a = a[:, :, None]
  if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
    raise DataError(f"expected an (H,W) or (H,W,1|2|3|4) image, got shape {a.shape}")
  c = a.shape[-1]
  if c in (2, 4):
    f = _to_unit_float(a)
    colour, alpha = f[..., :c - 1], f[..., c - 1:]
    out = (np.clip(colour * alpha + (1.0 - alpha), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  else:
    out = _to_uint8(a)
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return np.ascontiguousarray(out)


def _pil_to_rgb_uint8(im: Image.Image) -> np.ndarray:
  """Decoded PIL image (any mode) -> (H,W,3) uint8.  EXIF orientation is applied."""
  if im.getexif().get(0x0112, 1) not in (0, 1):  # EXIF orientation (skip the copy when upright)
    im = ImageOps.exif_transpose(im)
  mode = im.mode
  if mode in ("RGB", "L", "RGBA", "LA"):
    arr = np.asarray(im)
  elif mode == "1":
    arr = np.asarray(im.convert("L"))
  elif mode in ("P", "PA"):
    has_alpha = mode == "PA" or "transparency" in im.info
    arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
  elif mode.startswith("I;16"):  # 16-bit grey, any endianness
    arr = np.asarray(im).astype(np.uint16)
  elif mode == "I":  # 32-bit int container; Pillow uses it for 16-bit data (e.g. some PNG/TIFF)
    arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
  elif mode == "F":  # float TIFF etc.: taken to be in [0,1]
    arr = np.asarray(im, dtype=np.float32)
  elif mode == "RGBa":
    arr = np.asarray(im.convert("RGBA"))
  elif mode == "La":
    arr = np.asarray(im.convert("LA"))
  else:  # CMYK, YCbCr, LAB, HSV, ...
    arr = np.asarray(im.convert("RGB"))
  return to_rgb_uint8(arr)


# The most pixels an input image may have, checked from its header before it is decoded:
# 100 megapixels (a 12000 x 8000 photo is 96) unless JAXVISION_MAX_PIXELS says otherwise
# (a number of pixels; 0 or 'none': no limit of ours, Pillow's bomb check still applies).
MAX_PIXELS_ENV = "JAXVISION_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000


def max_image_pixels() -> int | None:
  """The input pixel limit in force (None: none of ours)."""
  v = os.environ.get(MAX_PIXELS_ENV, "").strip().lower()
  if not v:
    return DEFAULT_MAX_PIXELS
  if v in ("0", "none", "off"):
    return None
  try:
    n = int(float(v))
  except ValueError:
    raise DataError(f"{MAX_PIXELS_ENV}={v!r}: not a number of pixels") from None
  if n < 1:
    raise DataError(f"{MAX_PIXELS_ENV}={v!r}: must be positive (0 or none: no limit)")
  return n


def check_pixels(what: str, width: int, height: int) -> None:
  """Refuses an image of width x height above `max_image_pixels()`, naming the limit."""
  limit = max_image_pixels()
  if limit is not None and width * height > limit:
    mp = lambda n: f"{n / 1e6:.0f}" if n >= 1e7 else f"{n / 1e6:.4g}"
    raise DataError(f"{what}: {width}x{height} is {mp(width * height)} megapixels, more "
                    f"than the limit of {mp(limit)} (set {MAX_PIXELS_ENV} to change it)")


_PIL_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def _open_and_convert(fp, what: str) -> np.ndarray:
  # our limit replaces Pillow's bomb check (its warning at 89 MP, its error at 179 MP);
  # with ours switched off, Pillow's stays
  Image.MAX_IMAGE_PIXELS = None if max_image_pixels() is not None else _PIL_MAX_PIXELS
  try:
    with Image.open(fp) as im:
      check_pixels(what, *im.size)  # from the header, before any pixel is decoded
      im.load()  # force a full decode: truncated files fail here, not later in a worker
      return _pil_to_rgb_uint8(im)
  except DataError as e:
    if str(e).startswith(f"{what}: "):  # the pixel limit: already names the file
      raise
    raise DataError(f"{what}: not a readable image ({e})") from None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
          Image.DecompressionBombError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"{what}: not a readable image ({reason})") from None


def load_image_file(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file with Pillow -> (H,W,3) uint8.

  Handles grey 'L', 16-bit 'I;16'/'I' (round(v/257)), palette 'P' (with transparency), RGBA/LA
  (composited on white), CMYK/YCbCr (converted), '1' bilevel, 'F' float ([0,1] assumed), EXIF
  orientation, and takes the first frame of multi-frame files.  Colour profiles (ICC) are ignored.
  Raises DataError("{path}: not a readable image ({reason})") for truncated / non-image files.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"{path}: not a readable image (no such file)")
  return _open_and_convert(path, path)


def decode_image(data: bytes, what: str = "image bytes") -> np.ndarray:
  """Encoded image bytes (PNG, JPEG, ...) -> (H,W,3) uint8, same rules as load_image_file."""
  return _open_and_convert(io.BytesIO(bytes(data)), what)


def resize_max_side(image_uint8: np.ndarray, max_side: int | None) -> np.ndarray:
  """Antialiased (PIL LANCZOS) downscale so the long side is `max_side`; unchanged when the long
  side is already <= max_side or max_side is None/0.  Never upscales.  Keeps the dtype (uint8)."""
  if not max_side:
    return image_uint8
  h, w = image_uint8.shape[:2]
  long_side = max(h, w)
  if long_side <= max_side:
    return image_uint8
  s = max_side / long_side
  nh, nw = (max_side if h == long_side else max(1, round(h * s)),
            max_side if w == long_side else max(1, round(w * s)))
  im = Image.fromarray(np.ascontiguousarray(image_uint8))
  return np.asarray(im.resize((nw, nh), Image.Resampling.LANCZOS))


def _encode_png(rgb: np.ndarray, compress_level: int = 3) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=compress_level)
  return buf.getvalue()



# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _umask() -> int:
  """The process's umask (reading it means setting it: set back at once)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = True) -> None:
  """Writes `path` through `write(file)` into a temp file, fsyncs it, then renames it, so
  that readers (other workers / hosts / a user) see either no file or a complete one,
  even after a crash, and an error leaves nothing behind. Creates the parent folder.

  A path that cannot be written (a folder, a folder that cannot be created, no permission,
  a full disk) raises `OutputError` naming it, before or instead of a half-written file."""
  if os.path.isdir(path):
    raise OutputError(f"{path}: is a folder, not an output file")
  d = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  except OSError as e:
    raise OutputError(f"{path}: cannot write there ({e.strerror or e})") from None
  try:
    with os.fdopen(fd, "wb" if binary else "w") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes 0600)
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and not isinstance(e, UserError):
      raise OutputError(f"{path}: cannot write it ({e.strerror or e})") from None
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text), binary=False)


def to_uint8(x) -> np.ndarray:
  """Float image(s) in [0, 1] -> uint8 (clipped, rounded half up)."""
  return (np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def output_uint8(x, what: str) -> np.ndarray:
  """A model's float output in [0, 1] -> uint8, as `to_uint8`; refused (DataError naming
  `what`, nothing written) when it holds NaN or infinity: a diverged or damaged checkpoint
  gives a clear line, not a black or noise image that looks like a result."""
  x = np.asarray(x, np.float32)
  if not np.isfinite(x).all():
    raise DataError(f"{what}: the model's output holds NaN or infinity (a diverged or "
                    "damaged checkpoint?); nothing written")
  return to_uint8(x)


def write_png(path: str, array, *, make_folder: bool = False, compress_level: int = 3) -> None:
  """Writes a uint8 (H,W), (H,W,3) or (H,W,4) array as a PNG, atomically.

  A user's output path must name an existing folder (`make_folder=False`, the commands'
  choice: a typo in a folder name is an error, not a new folder)."""
  folder = os.path.dirname(os.path.abspath(path))
  if not make_folder and not os.path.isdir(folder):
    raise DataError(f"{path}: output folder {folder} does not exist")
  if os.path.isdir(path):
    raise DataError(f"{path}: is a folder, not an output file")
  a = np.ascontiguousarray(array)
  atomic_write(path, lambda f: Image.fromarray(a).save(f, format="PNG",
                                                       compress_level=compress_level))


# --------------------------------------------------------------------------------------------
# Reading with alpha
# --------------------------------------------------------------------------------------------

def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
  """(uint8 RGB image with alpha composited on white, its uint8 alpha channel or None).

  The one reader for the commands: grey, 16-bit, palette (with transparency), RGBA/LA,
  CMYK and EXIF-rotated images as `load_image_file` reads them; the alpha plane is
  returned too so that an operator's output can carry it again."""
  path = os.fspath(path)
  image = load_image_file(path)
  alpha = None
  try:
    with Image.open(path) as im:
      if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
          im.mode == "P" and "transparency" in im.info):
        if im.getexif().get(0x0112, 1) not in (0, 1):
          im = ImageOps.exif_transpose(im)
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: not a readable image ({e})") from None
  return image, alpha


def is_grey(path: str | os.PathLike) -> bool:
  """Whether an image file holds one colour channel (grey stays grey through a codec)."""
  with Image.open(path) as im:
    return im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "LA")
