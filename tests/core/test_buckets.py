"""Shape buckets (jaxvision.core.buckets): few programs for many sizes, and the padding
changes no output."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.core import buckets
from jaxvision.core.compile import count_compiles


def test_ladder_is_monotone_covers_and_is_small():
  sides = [buckets.bucket_side(n, 32) for n in range(1, 4097)]
  assert all(s >= n and s % 32 == 0 for n, s in zip(range(1, 4097), sides))
  assert sides == sorted(sides)
  assert len(set(sides)) == 24  # a handful of programs for any folder up to 4k
  padded = lambda n: -(-n // 32) * 32
  assert max(s / padded(n) for n, s in zip(range(1, 4097), sides)) <= 1.25
  for side in (256, 320, 384, 512, 640, 768, 1024, 1280, 1536, 2048):  # photos' sides
    assert buckets.bucket_side(side, 32) == side
  # the codec's ladder is this one in units of 64
  from jaxvision.compression import coding
  assert all(coding.bucket_side(n) == buckets.bucket_side(n, 64) for n in range(1, 4097))
  with pytest.raises(ValueError):
    buckets.bucket_side(0)


class _Net(nn.Module):
  """Stride-1 convs, a global pooling gate and an x2 pixel-shuffle: the layer kinds the
  masking must keep exact."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3), kernel_dilation=2, padding="SAME")(x))
    g = jax.nn.sigmoid(nn.Dense(8)(buckets.masked_mean(h)))
    h = nn.Conv(12, (3, 3), padding="SAME")(h * g)
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh, ww, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * hh, 2 * ww, 3)
    return nn.Conv(3, (3, 3), padding="SAME")(h)


def test_bucketed_apply_equals_whole_image_and_compiles_once_per_bucket():
  net = _Net()
  v = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  fn = lambda x: net.apply(v, x)
  run = buckets.bucketed_apply(fn)
  sizes = [(50, 37), (61, 40), (33, 64), (64, 33)]  # all in the (64, 64) bucket
  rng = np.random.RandomState(0)
  images = [rng.rand(1, h, w, 3).astype(np.float32) for h, w in sizes]
  with count_compiles() as c:
    outs = [run(x) for x in images]
  assert c.requests == 1  # one program for four sizes
  for x, y in zip(images, outs):
    ref = np.asarray(jax.jit(fn)(x))
    assert y.shape == ref.shape == (1, 2 * x.shape[1], 2 * x.shape[2], 3)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)


def test_without_mask_padding_would_change_the_border():
  """The property the masking buys: plain zero padding is not exact."""
  net = _Net()
  v = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  x = np.random.RandomState(1).rand(1, 50, 37, 3).astype(np.float32) + 0.5
  ref = np.asarray(net.apply(v, x))
  plain = np.asarray(net.apply(v, buckets.pad_to(x, 64, 64, batched=True)))[:, :100, :74]
  assert np.abs(plain - ref).max() > 1e-3
