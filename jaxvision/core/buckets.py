"""Shape buckets: one compiled program for many image sizes, with the padding masked out.

  bucket_side(n, multiple)          the smallest ladder side >= n (a multiple of `multiple`)
  bucket_shape(h, w, multiple)      (H, W) for an h x w image
  pad_to(x, H, W)                   zero-pads an (h, w, ...) or (n, h, w, ...) array bottom/right
  valid_region(h, w, H, W)          context: inside it (while a model is traced), every flax
                                    `nn.Conv` / `nn.ConvTranspose` sees zeros outside the
                                    valid top-left region of its input
  region_mask(x)                    (1, Hx, Wx, 1) float mask of the valid region at x's
                                    resolution, or None outside `valid_region`
  masked_mean(x)                    mean over axes (1, 2) of the valid region only

Why: XLA compiles one program per input shape, and a folder of photos has as many sizes as
photos. Padding each image to a few bucket shapes makes a handful of programs, but padding
alone changes the output near the bottom/right border: a "SAME" convolution sees zeros
beyond the image only at the input, and a hidden layer of zeros is not zero. Zeroing every
convolution's input outside the valid region reproduces, layer by layer, the zero padding the
network applies at the true image size, so the valid region of the output is the unpadded
result (same arithmetic per output element; only the summation order inside XLA's kernels
may differ, at float32 rounding). Layers that pool over the whole image (channel attention,
squeeze-excitation, instance norm) call `masked_mean`, which counts only the valid region.

`h` and `w` are traced values (int32 scalars), so one program serves every image of a bucket.
At a resolution Hx other than the bucket's H (after a stride or an upsampler), the valid
size is ceil(h * Hx / H): exact for stride-s layers when H and h are multiples of s, and for
upsamplers. Convolutions with stride > 1 are exact when both sizes give the same padding
(explicit padding always; "SAME" when h and H have the same residue modulo the stride, so
buckets for such networks are multiples of the total stride and so is the padded image).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import numpy as np

# The x1.25 side ladder, in units of `multiple`, after the first few multiples: sides
# waste under 40% of a side at worst (x1.25 rounded up to whole multiples), about 12% typically.
_LADDER_RATIO = 1.25

_region: contextvars.ContextVar = contextvars.ContextVar("jaxvision_valid_region", default=None)


def bucket_side(n: int, multiple: int = 32, ratio: float = _LADDER_RATIO) -> int:
  """The smallest side >= n on the ladder multiple * {1, 2, 3, 4, then x`ratio` rounded up}.

  Every side is a multiple of `multiple`; a folder of sizes from 100 to 2000 px lands on
  about a dozen sides."""
  if n < 1:
    raise ValueError(f"bucket_side: side {n} must be positive")
  units = -(-int(n) // multiple)  # ceil
  side = 1
  while side < units:
    side = side + 1 if side < 4 else max(side + 1, int(math.ceil(side * ratio)))
  return side * multiple


def bucket_shape(h: int, w: int, multiple: int = 32) -> tuple[int, int]:
  """The bucket (H, W) of an h x w image: each side on the ladder."""
  return bucket_side(h, multiple), bucket_side(w, multiple)


def pad_to(x: np.ndarray, height: int, width: int, *, batched: bool = False) -> np.ndarray:
  """Zero-pads the spatial dims (0, 1; or 1, 2 when `batched`) bottom/right to height x width."""
  a = 1 if batched else 0
  h, w = x.shape[a], x.shape[a + 1]
  if h > height or w > width:
    raise ValueError(f"pad_to: {h}x{w} does not fit in {height}x{width}")
  if (h, w) == (height, width):
    return x
  pad = [(0, 0)] * x.ndim
  pad[a], pad[a + 1] = (0, height - h), (0, width - w)
  return np.pad(x, pad)


def _valid(size, full: int, at: int):
  """ceil(size * at / full) for a traced `size` (the valid extent at another resolution)."""
  if at == full:
    return size
  return (size * at + full - 1) // full


def region_mask(x):
  """The valid-region mask (1, Hx, Wx, 1) at x's resolution (x: (n, Hx, Wx, c)), or None."""
  r = _region.get()
  if r is None:
    return None
  import jax.numpy as jnp
  h, w, big_h, big_w = r
  hx, wx = x.shape[1], x.shape[2]
  rows = jnp.arange(hx) < _valid(h, big_h, hx)
  cols = jnp.arange(wx) < _valid(w, big_w, wx)
  return (rows[:, None] & cols[None, :])[None, :, :, None]


def apply_mask(x):
  """x with zeros outside the valid region (x unchanged outside `valid_region`)."""
  m = region_mask(x)
  if m is None:
    return x
  import jax.numpy as jnp
  return jnp.where(m, x, jnp.zeros((), x.dtype))


def masked_mean(x, keepdims: bool = True):
  """Mean over axes (1, 2) of the valid region (the plain mean outside `valid_region`).

  Accumulates in float32, as the pooling layers do, and returns x's dtype."""
  import jax.numpy as jnp
  m = region_mask(x)
  xf = x.astype(jnp.float32)
  if m is None:
    return jnp.mean(xf, axis=(1, 2), keepdims=keepdims).astype(x.dtype)
  s = jnp.sum(jnp.where(m, xf, 0.0), axis=(1, 2), keepdims=keepdims)
  count = jnp.sum(m.astype(jnp.float32), axis=(1, 2), keepdims=keepdims)
  return (s / count).astype(x.dtype)


def _mask_conv_inputs(next_fun, args, kwargs, context):
  import flax.linen as nn
  if (context.method_name == "__call__" and args
      and isinstance(context.module, (nn.Conv, nn.ConvTranspose))):
    args = (apply_mask(args[0]),) + tuple(args[1:])
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def valid_region(h, w, height: int, width: int) -> Iterator[None]:
  """Within the block, traced models treat only the top-left h x w of a height x width input
  as the image (h, w: ints or traced int32 scalars; height, width: the static bucket)."""
  import flax.linen as nn
  token = _region.set((h, w, int(height), int(width)))
  try:
    with nn.intercept_methods(_mask_conv_inputs):
      yield
  finally:
    _region.reset(token)


def bucketed_apply(fn, multiple: int = 32):
  """Wraps `fn(x) -> y` (a model applied to a (1, h, w, c) float image, y of the same spatial
  size times an integer scale) so that it compiles once per bucket, not once per size.

  Returns `run(x)`: pads x to its bucket, calls a jitted fn under `valid_region` with the
  true size as traced arguments, and crops the result to the true size (times the scale)."""
  import jax

  @jax.jit
  def padded(x, h, w):
    with valid_region(h, w, x.shape[1], x.shape[2]):
      return fn(x)

  def run(x):
    x = np.asarray(x)
    h, w = x.shape[1], x.shape[2]
    big_h, big_w = bucket_shape(h, w, multiple)
    y = np.asarray(padded(pad_to(x, big_h, big_w, batched=True), np.int32(h), np.int32(w)))
    s = y.shape[1] // big_h
    return y[:, :h * s, :w * s]  # on the host: a device slice would compile per size

  run.padded = padded
  return run
