"""The MTCNN detector's programs: the three nets in forms that XLA:CPU runs fast.

The same functions as `PNet`, `RNet` and `ONet` of jaxvision.faces.models on the same
parameter trees (tested equal to the modules' `apply` to float32 rounding), written for
inference. Training keeps the modules; only the detector's compiled calls use these.

Why they differ from the modules (measured on the 2-core Xeon of BENCHMARKS.md, XLA:CPU,
JAX 0.10.2): XLA:CPU's convolution is slow when the input has only 3 channels, the first
layer of every net (P-Net's 3->10 ran at 5 GMAC/s, R-Net's 3->28 on 24x24 crops at 2.6,
O-Net's 3->32 at 4; the later layers run at 26-37).

- P-Net: conv1 (3x3, 3->10) followed by the 2x2/2 max pool is computed on the
  space-to-depth input (each 2x2 block of pixels as 12 channels): one 2x2 convolution
  12 -> 40 gives conv1 at the four positions of every pooling window at once (the 3x3
  kernel placed at the four offsets of a 4x4 window, zeros elsewhere), and the pool is a
  max over those four. 1.8x the multiply-adds of conv1, done 2.2x faster, and the
  pooling window op is gone. Needs an even conv1 output (the detector's 256x256 tiles:
  254); other sizes take the plain path.
- R-Net and O-Net: conv1 as an explicit patch matrix (the nine shifted copies of the crop
  side by side, 27 columns) times the kernel, one matmul: 4-5x faster on that layer at
  the detector's batches (16-64 crops), about 2x on the whole net. Doing the same to the
  later layers was slower or no better (their convolutions already run well).
- The heads (P-Net's 1x1 face and box convolutions, the nets' final dense layers) are one
  matmul over their concatenated kernels.
The pool mask of packed pyramid levels (see jaxvision.faces.detector) applies as in
`PNet`: conv1 cells outside it take no part in any pooling window.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# This module imports no flax: a detection with the released weights runs these functions
# on the weights' plain arrays, and `jaxvision detect-faces` does not pay flax's import
# (0.2-0.3 s of its start-up on the 2-core CPU); models.py imports the shared pieces below.


def normalize(x):
  """Pixels 0..255 (uint8 or float) -> float32 (x - 127.5) / 128, every net's input."""
  xp = jnp if isinstance(x, jax.Array) else np
  return (xp.asarray(x, xp.float32) - 127.5) / 128.0


def swap_hw_flatten(x):
  """(N, H, W, C) -> (N, W*H*C) in Caffe's order: the released dense weights need it."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class Released:
  """Stands in the detector for the released architecture of MTCNN stage `stage`
  ("pnet", "rnet", "onet") where a trained cascade holds its flax module: hashable, with
  a stable repr (both are part of a compiled program's key)."""
  stage: str


def _max_pool(x, k: int, s: int, padding: str):
  """flax.linen.max_pool(x, (k, k), (s, s), padding): SAME is TF's (the larger half after)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), padding)


def _conv(x, p):
  return jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]


def _prelu(x, p):
  a = p["alpha"]
  return jnp.where(x >= 0, x, a * x)


def _patch_conv(x, p):
  """A VALID convolution as one matmul over its explicit patch matrix (k*k*C columns)."""
  w = p["kernel"]
  k = w.shape[0]
  n, h, wd, c = x.shape
  oh, ow = h - k + 1, wd - k + 1
  cols = jnp.concatenate([x[:, dy:dy + oh, dx:dx + ow, :]
                          for dy in range(k) for dx in range(k)], axis=-1)
  y = cols.reshape(-1, k * k * c) @ w.reshape(k * k * c, -1)
  return y.reshape(n, oh, ow, -1) + p["bias"]


def _space_to_depth(x):
  """(N, H, W, C) with even H, W -> (N, H/2, W/2, 4C), channels ordered (dy, dx, c)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // 2, w // 2, 4 * c)


def _phase_selector() -> np.ndarray:
  """0/1 table [ty, tx, qy, qx, py, px, dy, dx]: tap (dy, dx) of the 3x3 kernel at output
  offset (py, px) reads input block (ty, tx), phase (qy, qx) of the space-to-depth input."""
  sel = np.zeros((2,) * 6 + (3, 3), np.float32)
  for py in range(2):
    for px in range(2):
      for dy in range(3):
        for dx in range(3):
          ry, rx = py + dy, px + dx  # input offset from the block's corner, 0..3
          sel[ry // 2, rx // 2, ry % 2, rx % 2, py, px, dy, dx] = 1.0
  return sel


_PHASES = _phase_selector()


def _phase_kernel(w):
  """A 3x3 kernel (3, 3, C, F) -> the 2x2 kernel over space-to-depth input (2, 2, 4C, 4F)
  whose output channel group (py, px) is the 3x3 convolution at offset (py, px) of each
  2x2 output block: one contraction with a constant 0/1 table (exact: each entry is one
  tap times 1), not 36 scatters in every P-Net call."""
  _, _, c, f = w.shape
  out = jnp.einsum("abqrpsyx,yxcf->abqrcpsf", _PHASES, w,
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(2, 2, 4 * c, 4 * f)


def _heads(x, params, names):
  """The named dense/1x1 heads as one matmul -> {name: output}."""
  ks = [params[n]["kernel"].reshape(-1, params[n]["kernel"].shape[-1]) for n in names]
  y = x @ jnp.concatenate(ks, axis=1) + jnp.concatenate([params[n]["bias"] for n in names])
  out, at = {}, 0
  for n, k in zip(names, ks):
    out[n] = y[..., at:at + k.shape[1]]
    at += k.shape[1]
  return out


def pnet(variables, x, pool_mask=None):
  """`PNet().apply(variables, x, pool_mask=pool_mask)` (the released width)."""
  p = variables["params"]
  n, h, w, _ = x.shape
  if (h - 2) % 2 or (w - 2) % 2:  # odd conv1 output: conv1, then the ceil-mode pool
    y = _prelu(_conv(x, p["conv1"]), p["prelu1"])
    if pool_mask is not None:
      y = jnp.where(pool_mask[..., None], y, -jnp.inf)
    y = _max_pool(y, 2, 2, "SAME")
    if pool_mask is not None:
      y = jnp.where(jnp.isfinite(y), y, 0.0)
  else:  # conv1 at the four positions of each 2x2 pooling window, on 2x2 input blocks
    xs = _space_to_depth(x)  # (n, h/2, w/2, 12)
    k1 = {"kernel": _phase_kernel(p["conv1"]["kernel"]),
          "bias": jnp.tile(p["conv1"]["bias"], 4)}
    y = _prelu(_conv(xs, k1), {"alpha": jnp.tile(p["prelu1"]["alpha"], 4)})
    f = p["conv1"]["kernel"].shape[-1]
    y = y.reshape(y.shape[:3] + (4, f))  # (n, (h-2)/2, (w-2)/2, phase, f)
    if pool_mask is not None:
      m = _space_to_depth(pool_mask[..., None])  # (n, (h-2)/2, (w-2)/2, 4)
      y = jnp.where(m[..., None], y, -jnp.inf).max(axis=3)
      y = jnp.where(jnp.isfinite(y), y, 0.0)
    else:
      y = y.max(axis=3)
  y = _prelu(_conv(y, p["conv2"]), p["prelu2"])
  y = _prelu(_conv(y, p["conv3"]), p["prelu3"])
  o = _heads(y, p, ("face", "box"))
  return {"logits": o["face"], "box": o["box"]}


def rnet(variables, x):
  """`RNet().apply(variables, x)` on (N, 24, 24, 3) normalised crops."""
  p = variables["params"]
  x = _max_pool(_prelu(_patch_conv(x, p["conv1"]), p["prelu1"]), 3, 2, "SAME")
  x = _max_pool(_prelu(_conv(x, p["conv2"]), p["prelu2"]), 3, 2, "VALID")
  x = _prelu(_conv(x, p["conv3"]), p["prelu3"])
  x = _prelu(swap_hw_flatten(x) @ p["fc4"]["kernel"] + p["fc4"]["bias"], p["prelu4"])
  o = _heads(x, p, ("face", "box"))
  return {"logits": o["face"], "box": o["box"]}


def onet(variables, x):
  """`ONet().apply(variables, x)` on (N, 48, 48, 3) normalised crops."""
  p = variables["params"]
  x = _max_pool(_prelu(_patch_conv(x, p["conv1"]), p["prelu1"]), 3, 2, "SAME")
  x = _max_pool(_prelu(_conv(x, p["conv2"]), p["prelu2"]), 3, 2, "VALID")
  x = _max_pool(_prelu(_conv(x, p["conv3"]), p["prelu3"]), 2, 2, "SAME")
  x = _prelu(_conv(x, p["conv4"]), p["prelu4"])
  x = _prelu(swap_hw_flatten(x) @ p["fc5"]["kernel"] + p["fc5"]["bias"], p["prelu5"])
  o = _heads(x, p, ("face", "box", "landmarks"))
  return {"logits": o["face"], "box": o["box"], "landmarks": o["landmarks"]}


NETS = {"pnet": pnet, "rnet": rnet, "onet": onet}
