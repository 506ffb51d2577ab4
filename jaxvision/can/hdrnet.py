"""HDRNet (Gharbi, Chen, Barron, Hasinoff, Durand, "Deep Bilateral Learning for Real-Time
Image Enhancement", SIGGRAPH 2017): a low-resolution network predicts a bilateral grid of
3x4 affine colour transforms; a full-resolution guidance map slices it.

  slice_grid(grid, guide)          trilinear slicing (jit-compiled, differentiable)
  apply_affine(coeffs, image)      out_c = sum_k A[c, k] image_k + A[c, 3]
  HDRNet                           the model: registered as "hdrnet" (jaxvision.can.models)
The numpy oracle of the slicing is in tests/can/test_hdrnet.py.

The network (paper section 3.1, figure 2). The full-resolution input I is resized to
`lowres` x `lowres` (256 in the paper; aspect not kept): a k x k block mean
(`box_reduce`) and then bilinear resizing with antialiasing. Low-
level features: `n_splat` 3x3 stride-2 convolutions + ReLU with 8, 16, 32, 64 channels
(c_m * 2^i). Local path: two 3x3 convolutions of 64 channels (the second linear, no bias).
Global path: two 3x3 stride-2 convolutions of 64 then three fully connected layers 256,
128, 64 (the last linear). Fusion: ReLU(local + global), broadcast over the grid. A 1x1
convolution gives `grid_depth` x 12 coefficients per cell: with lowres 256 and 4 splat
layers a 16 x 16 x 8 grid of 3x4 affine matrices. The global path sees the whole image,
so the model has no bounded receptive field: it runs on the whole image, at any size,
since only the grid is low-resolution (`full_resolution = True`; `jaxvision enhance` then
uses no tiles).

Guidance map (section 3.4.1): g(I) = clip(sum_c w_c rho_c(M_c . I + b_c) + b, 0, 1): a 3x3
colour matrix M (identity at initialisation), per channel a piecewise-linear curve
rho_c(x) = sum_i a_ci ReLU(x - t_ci) with 16 knots t (initialised evenly in [0, 1), slopes
a = (1, 0, ...): the identity), then a mix w (1/3 each): the luminance-like grey value at
initialisation.

Slicing (section 3.3). Pixel (x, y) of an H x W image with guidance z in [0, 1] reads the
grid (gh, gw, gd) at continuous coordinates
  gx = (x + 0.5) * gw / W - 0.5,  gy = (y + 0.5) * gh / H - 0.5,  gz = z * gd - 0.5
(cell centres, the convention of the official code's bilateral_slice), with the tent
weights max(0, 1 - |g - i|) of the 8 neighbouring cells; indices beyond the grid are
clamped (edge cells repeat). It is computed as nested linear interpolations
a + t (b - a) (z, then y, then x) of 8 gathers: equal corners give that value exactly, so
a grid of identity affines returns the input bit for bit, and the result is differentiable
in the grid (gather -> scatter-add) and in the guidance (through t).

Compute dtype: `dtype` ("bfloat16" on GPU/TPU; float32 by default) is that of the
low-resolution network only (splat, local, global and fusion layers, the coefficients'
1x1 convolution), with `param_dtype` (float32) for their parameters. The grid is cast to
float32 as it leaves the network, and the full-resolution work is float32 whatever the
dtype: the downsampling, the guidance map, the trilinear slicing (whose exactness on
identity grids and whose gradients in the guidance rest on float32 coordinates) and the
affine colour transform of the image.

Initialisation: the coefficient layer's kernel is zero and its bias the identity affine in
every cell, so the untrained network is the identity operator (as CAN's identity init);
training moves it from there.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

N_COEFFS = 12  # a 3x4 affine matrix per grid cell


def _lerp(a, b, t):
  return a + t * (b - a)


@jax.jit
def slice_grid(grid: jnp.ndarray, guide: jnp.ndarray) -> jnp.ndarray:
  """grid (N, gh, gw, gd, C), guide (N, H, W) in [0, 1] -> (N, H, W, C) trilinear samples."""
  n, gh, gw, gd, c = grid.shape
  _, h, w = guide.shape
  gy = (jnp.arange(h, dtype=jnp.float32) + 0.5) * (gh / h) - 0.5
  gx = (jnp.arange(w, dtype=jnp.float32) + 0.5) * (gw / w) - 0.5
  gz = guide.astype(jnp.float32) * gd - 0.5

  def split(g, size):
    i0 = jnp.floor(g)
    t = g - i0
    i0 = i0.astype(jnp.int32)
    return jnp.clip(i0, 0, size - 1), jnp.clip(i0 + 1, 0, size - 1), t

  y0, y1, ty = split(gy, gh)
  x0, x1, tx = split(gx, gw)
  z0, z1, tz = split(gz, gd)
  flat = grid.reshape(n, gh * gw * gd, c)

  def take(yi, xi, zi):  # (H,) (W,) (N,H,W) -> (N, H, W, C): one row gather per pixel
    idx = (yi[None, :, None] * gw + xi[None, None, :]) * gd + zi
    return jax.vmap(lambda f, i: f[i])(flat, idx)

  tz = tz[..., None]
  ty = ty[None, :, None, None]
  tx = tx[None, None, :, None]

  def along_z(yi, xi):
    return _lerp(take(yi, xi, z0), take(yi, xi, z1), tz)

  top = _lerp(along_z(y0, x0), along_z(y1, x0), ty)
  bottom = _lerp(along_z(y0, x1), along_z(y1, x1), ty)
  return _lerp(top, bottom, tx)


def apply_affine(coeffs: jnp.ndarray, image: jnp.ndarray) -> jnp.ndarray:
  """coeffs (N, H, W, 12) as 3 rows of [a_r, a_g, a_b, bias]; image (N, H, W, 3)."""
  # Written as broadcast multiply-adds, which XLA fuses with the slicing into one pass; an
  # einsum over these tiny axes became a dot_general that took 10x longer on XLA:CPU.
  a = coeffs.reshape(coeffs.shape[:-1] + (3, 4))
  return (a[..., 0] * image[..., 0:1] + a[..., 1] * image[..., 1:2]
          + a[..., 2] * image[..., 2:3] + a[..., 3])


def identity_affine_bias(grid_depth: int):
  """Bias of the coefficient layer: the identity 3x4 matrix in each of the depth bins."""
  def init(key, shape, dtype=jnp.float32):
    del key
    eye = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1).reshape(-1)
    b = np.tile(eye, grid_depth)
    assert b.shape == tuple(shape), (b.shape, shape)
    return jnp.asarray(b, dtype)
  return init


def box_reduce(x, lowres: int):
  """Mean over k x k blocks, k = min(H, W) // lowres (a no-op when k < 2), so the
  antialiased resize to lowres^2 starts from at most ~2x its size: at 1080p the resize of
  the full image cost half the network's time on XLA:CPU, the block mean is one cheap pass
  (and itself an antialiasing filter). The last H % k rows and W % k columns are dropped."""
  n, h, w, c = x.shape
  k = min(h, w) // lowres
  if k < 2:
    return x
  hh, ww = h // k * k, w // k * k
  return x[:, :hh, :ww].reshape(n, hh // k, k, ww // k, k, c).mean(axis=(2, 4))


class Guide(nn.Module):
  """Per-pixel guidance g(I) in [0, 1] (colour matrix, 16-knot curves, channel mix)."""

  knots: int = 16

  @nn.compact
  def __call__(self, x):
    ccm = self.param("ccm", lambda k, s: jnp.eye(3, dtype=jnp.float32), (3, 3))
    ccm_bias = self.param("ccm_bias", nn.initializers.zeros, (3,))
    shifts = self.param("shifts", lambda k, s: jnp.tile(
        jnp.linspace(0.0, 1.0, self.knots, endpoint=False)[:, None], (1, 3)), (self.knots, 3))
    slopes = self.param("slopes", lambda k, s: jnp.zeros(s).at[0].set(1.0), (self.knots, 3))
    mix = self.param("mix", lambda k, s: jnp.full(s, 1.0 / 3.0), (3,))
    bias = self.param("bias", nn.initializers.zeros, ())
    # Broadcast multiply-adds over the 3 channels and 16 knots (fused elementwise by XLA);
    # einsums and a (.., 16, 3) intermediate were 40x slower on XLA:CPU at 1080p.
    y = x[..., 0:1] * ccm[:, 0] + x[..., 1:2] * ccm[:, 1] + x[..., 2:3] * ccm[:, 2] + ccm_bias
    curves = slopes[0] * nn.relu(y - shifts[0])
    for i in range(1, self.knots):
      curves = curves + slopes[i] * nn.relu(y - shifts[i])
    g = curves[..., 0] * mix[0] + curves[..., 1] * mix[1] + curves[..., 2] * mix[2] + bias
    return jnp.clip(g, 0.0, 1.0)


class HDRNet(nn.Module):
  """(N, H, W, 3) in [0, 1] -> (N, H, W, 3); any size (the grid is low-resolution)."""

  lowres: int = 256
  n_splat: int = 4
  grid_depth: int = 8
  width: int = 8          # c_m: splat layer i has width * 2^i channels
  features: int = 64      # local / global / fusion width
  fc: tuple = (256, 128)  # the global path's hidden fully connected layers (then `features`)
  dtype: Any = jnp.float32  # the low-resolution network's; the slicing stays float32
  param_dtype: Any = jnp.float32
  full_resolution = True  # no tiles: `jaxvision enhance` runs it on the whole image

  def grid_shape(self) -> tuple[int, int, int]:
    s = self.lowres // 2 ** self.n_splat
    return s, s, self.grid_depth

  def coefficients(self, x):
    """The bilateral grid (N, gh, gw, gd, 12) of x (N, H, W, 3)."""
    dt = jnp.dtype(self.dtype) if isinstance(self.dtype, str) else self.dtype
    pdt = jnp.dtype(self.param_dtype) if isinstance(self.param_dtype, str) else self.param_dtype
    n = x.shape[0]
    lo = jax.image.resize(box_reduce(x, self.lowres), (n, self.lowres, self.lowres,
                                                       x.shape[-1]), "linear",
                          antialias=True).astype(dt)
    conv = lambda h, c, s, name, bias=True: nn.Conv(  # noqa: E731
        c, (3, 3), strides=(s, s), padding="SAME", use_bias=bias, dtype=dt, param_dtype=pdt,
        name=name)(h)
    h = lo
    for i in range(self.n_splat):
      h = nn.relu(conv(h, self.width * 2 ** i, 2, f"splat{i + 1}"))
    local = conv(nn.relu(conv(h, self.features, 1, "local1")), self.features, 1, "local2",
                 bias=False)
    g = h
    for i in range(2):
      g = nn.relu(conv(g, self.features, 2, f"global_conv{i + 1}"))
    g = g.reshape(n, -1)
    for i, f in enumerate(self.fc):
      g = nn.relu(nn.Dense(f, dtype=dt, param_dtype=pdt, name=f"global_fc{i + 1}")(g))
    g = nn.Dense(self.features, dtype=dt, param_dtype=pdt,
                 name=f"global_fc{len(self.fc) + 1}")(g)
    fused = nn.relu(local + g[:, None, None, :])
    coeffs = nn.Conv(self.grid_depth * N_COEFFS, (1, 1), dtype=dt, param_dtype=pdt,
                     name="coefficients",
                     kernel_init=nn.initializers.zeros,
                     bias_init=identity_affine_bias(self.grid_depth))(fused)
    gh, gw, gd = self.grid_shape()
    return coeffs.astype(jnp.float32).reshape(n, gh, gw, gd, N_COEFFS)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"HDRNet expects (N, H, W, 3) input, got shape {x.shape}")
    if self.lowres % 2 ** (self.n_splat + 2):
      raise ValueError(f"HDRNet: lowres {self.lowres} must be a multiple of "
                       f"{2 ** (self.n_splat + 2)} (n_splat + 2 stride-2 layers)")
    x = x.astype(jnp.float32)
    grid = self.coefficients(x)
    guide = Guide(name="guide")(x)
    return apply_affine(slice_grid(grid, guide), x)
