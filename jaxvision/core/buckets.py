"""Shape buckets: one compiled program for many image sizes, with the padding masked out.

  bucket_side(n, multiple)          the smallest ladder side >= n (a multiple of `multiple`)
  bucket_shape(h, w, multiple)      (H, W) for an h x w image
  pad_to(x, H, W)                   zero-pads an (h, w, ...) or (n, h, w, ...) array bottom/right
  valid_region(h, w, H, W)          context: inside it (while a model is traced), every flax
                                    `nn.Conv` / `nn.ConvTranspose` sees zeros outside the
                                    valid top-left region of its input
  region_mask(x)                    (1, Hx, Wx, 1) float mask of the valid region at x's
                                    resolution, or None outside `valid_region`
  valid_size(x), valid_extent(H, W) the traced valid (h, w) at x's (or an H x W) resolution,
                                    or None outside `valid_region`
  masked_mean(x)                    mean over axes (1, 2) of the valid region only
  valid_mean(x, h, w)               mean over axes (1, 2) of x's top-left h x w (traced)
  bucketed_apply(fn, multiple)      fn(x) compiled once per bucket, not once per size

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

A model that pads explicitly before a "VALID" convolution (reflection padding, the style
networks) cannot have that convolution's input masked: the padded map is larger than the
resolution it stands for. Such a model pads with `valid_size` (mirroring at the valid
border) and marks the convolution `unmasked_in_region = True` (a class attribute of an
nn.Conv subclass): the interceptor then leaves its input alone.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import numpy as np

_region: contextvars.ContextVar = contextvars.ContextVar("jaxvision_valid_region", default=None)


def bucket_side(n: int, multiple: int = 32) -> int:
  """The smallest side >= n on the ladder, in units of `multiple`: every unit up to 8,
  then m * 2^k for m = 5, 6, 7, 8 (10, 12, 14, 16, 20, 24, 28, 32, ...).

  Each step is at most x1.25, and the usual photo and screen sides are on it (with 32:
  256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 2048; with the codec's 64
  the same from 512 up), so a photo wastes little padding: 3 % more pixels than the images
  on the codec's benchmark folder, where the earlier x1.25-rounded ladder (448, 576, 960,
  1216, ...) padded 20 %. Sides 1 to 4096 land on 24 sides with 32, 20 with 64."""
  if n < 1:
    raise ValueError(f"bucket_side: side {n} must be positive")
  units = -(-int(n) // multiple)  # ceil
  if units <= 8:
    return units * multiple
  k = 1
  while True:
    for m in (5, 6, 7, 8):
      if m * 2 ** k >= units:
        return m * 2 ** k * multiple
    k += 1


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


def valid_extent(height: int, width: int):
  """The valid (h, w) (traced int32) at a height x width resolution of the current
  `valid_region`, or None outside one."""
  r = _region.get()
  if r is None:
    return None
  h, w, big_h, big_w = r
  return _valid(h, big_h, int(height)), _valid(w, big_w, int(width))


def valid_size(x):
  """`valid_extent` at the resolution of x (n, Hx, Wx, c), or None outside `valid_region`."""
  return valid_extent(x.shape[1], x.shape[2])


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
  xf = x.astype(jnp.float32)
  valid = valid_size(x)
  if valid is None:
    return jnp.mean(xf, axis=(1, 2), keepdims=keepdims).astype(x.dtype)
  return valid_mean(xf, *valid, keepdims=keepdims).astype(x.dtype)


def valid_mean(x, h, w, keepdims: bool = True):
  """Mean over axes (1, 2) of the top-left h x w of x (n, H, W, c) (h, w traced).

  The valid pixels are first packed in the unpadded image's row-major order (then zeros)
  so that XLA adds them in about the order it adds the unpadded image's (zeros between the
  rows would change its vectorised summation order more); and XLA turns jnp.mean's
  division by the constant count into a product with its reciprocal, as done here. Equal
  to the unpadded mean to float32 rounding: XLA:CPU's reduction order depends on the
  shape (and on what it fuses), so not always to the last bit."""
  import jax.numpy as jnp
  n, big_h, big_w, c = x.shape
  p = jnp.arange(big_h * big_w)
  src = jnp.clip((p // w) * big_w + p % w, 0, big_h * big_w - 1)
  packed = jnp.take(x.reshape(n, big_h * big_w, c), src, axis=1)
  packed = jnp.where((p < h * w)[None, :, None], packed, 0).reshape(x.shape)
  total = jnp.sum(packed, axis=(1, 2), keepdims=keepdims)
  return total * (1.0 / (h * w).astype(x.dtype))


def _mask_conv_inputs(next_fun, args, kwargs, context):
  import flax.linen as nn
  if (context.method_name == "__call__" and args
      and isinstance(context.module, (nn.Conv, nn.ConvTranspose))
      and not getattr(context.module, "unmasked_in_region", False)):
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


def bucketed_apply(fn, multiple: int = 32, *, keep_sides=()):
  """Wraps `fn(x, *args) -> y` (a model applied to a (1, h, w, c) float image, y of the same
  spatial size times an integer scale) so that it compiles once per bucket, not once per size.

  Returns `run(x, *args)`: pads x to its bucket, calls a jitted fn under `valid_region` with
  the true size as traced arguments, and crops the result to the true size (times the
  scale). `args` are traced too (a seed, say). A side in `keep_sides` is its own bucket (a
  tiler's window side: large images then run unpadded in the one window shape); keep
  sides that are multiples of `multiple` when the network has strides."""
  import jax

  keep = frozenset(int(k) for k in keep_sides)

  @jax.jit
  def padded(x, h, w, *args):
    with valid_region(h, w, x.shape[1], x.shape[2]):
      return fn(x, *args)

  def side(n):
    return n if n in keep else bucket_side(n, multiple)

  def run(x, *args):
    x = np.asarray(x)
    h, w = x.shape[1], x.shape[2]
    big_h, big_w = side(h), side(w)
    y = np.asarray(padded(pad_to(x, big_h, big_w, batched=True), np.int32(h), np.int32(w),
                          *args))
    s = y.shape[1] // big_h
    return y[:, :h * s, :w * s]  # on the host: a device slice would compile per size

  run.padded = padded
  run.multiple = multiple
  return run
