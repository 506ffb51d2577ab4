"""CAN: shapes, identity initialisation, receptive field, jit parity, seam-free tiling."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision import models
from jaxvision.can.models import receptive_radius
from jaxvision.core.tiling import apply_tiled


def _init(model, shape, seed=0):
  return model.init(jax.random.PRNGKey(seed), jnp.zeros(shape), train=False)


def _perturb(variables, seed=1, scale=0.1):
  """Random non-identity weights, non-trivial μ and running statistics."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      l + scale * jax.random.normal(k, l.shape) if l.ndim else l + 0.3
      for l, k in zip(leaves, keys)])


def test_registry():
  assert {"can", "can24", "can32"} <= set(models.list_models())
  assert models.create("can32").width == 32
  with pytest.raises(ValueError, match="unknown model 'can23'.*can24"):
    models.create("can23")


def test_can24_matches_released_network():
  m = models.create("can24")
  assert m.dilations() == [1, 2, 4, 8, 16, 32, 64, 1]
  v = _init(m, (1, 16, 16, 3))
  p = v["params"]
  assert p["conv1"]["kernel"].shape == (3, 3, 3, 24)
  assert p["conv8"]["kernel"].shape == (3, 3, 24, 24)
  assert p["output"]["kernel"].shape == (1, 1, 24, 3)
  assert "bias" not in p["conv1"]  # BN follows, as in the released code
  assert float(p["norm1"]["lambda"]) == 1.0 and float(p["norm1"]["mu"]) == 0.0
  n = sum(x.size for x in jax.tree.leaves(p))
  # 3*3*3*24 + 7*3*3*24*24 + 24*3+3 convs, 8*(24 beta + 2) norms
  assert n == 648 + 7 * 5184 + 75 + 8 * 26


def test_identity_initialisation_is_identity():
  m = models.create("can24")
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 33, 17, 3))
  v = _init(m, x.shape)
  np.testing.assert_allclose(m.apply(v, x), x, atol=1e-6)


@settings(max_examples=6, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40))
def test_any_size_keeps_shape(h, w):
  m = models.create("can", width=8, depth=5)
  v = _init(m, (1, 8, 8, 3))
  y = m.apply(_perturb(v), jnp.ones((1, h, w, 3)))
  assert y.shape == (1, h, w, 3)
  assert bool(jnp.isfinite(y).all())


class JitParity(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_no_jit_agree(self):
    m = models.create("can", width=8, depth=6)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 23, 31, 3))
    v = _perturb(_init(m, x.shape))
    infer = lambda v, x: m.apply(v, x, train=False)
    train = lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"])
    ref_infer = jax.jit(infer)(v, x)
    ref_train = jax.jit(train)(v, x)
    chex.assert_trees_all_close(self.variant(infer)(v, x), ref_infer, atol=1e-5)
    chex.assert_trees_all_close(self.variant(train)(v, x), ref_train, atol=1e-5)


def test_receptive_field():
  """A pixel `r` away changes the output, one `r + 1` away does not."""
  m = models.create("can", width=4, depth=5)  # dilations 1, 2, 4, then 1
  r = receptive_radius(5)
  assert r == 8
  v = _perturb(_init(m, (1, 8, 8, 3)), scale=0.3)
  size = 2 * r + 5
  c = size // 2
  base = jnp.zeros((1, size, size, 3)) + 0.5
  f = jax.jit(lambda x: m.apply(v, x)[0, c, c])
  y0 = f(base)
  assert not np.allclose(f(base.at[0, c, c + r].add(1.0)), y0)
  assert np.allclose(f(base.at[0, c, c + r + 1].add(1.0)), y0, atol=0, rtol=0)


@pytest.mark.parametrize("hw", [(70, 45), (64, 64), (33, 90)])
def test_tiled_equals_whole_image(hw):
  """Overlapping tiles reproduce the whole-image output: no seams."""
  m = models.create("can", width=6, depth=5)
  v = _perturb(_init(m, (1, 8, 8, 3)))
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), hw + (3,)))
  calls = []
  fn = jax.jit(lambda b: m.apply(v, b))
  def counted(b):
    calls.append(b.shape)
    return fn(b)
  whole = np.asarray(fn(x[None]))[0]
  tiled = apply_tiled(counted, x, radius=receptive_radius(5), tile=16)
  assert len(calls) > 1 and len(set(calls)) == 1  # one window shape: one compile
  np.testing.assert_allclose(tiled, whole, atol=1e-5)
  # Too little context is wrong near tile borders: the test above can fail.
  short = apply_tiled(fn, x, radius=2, tile=16)
  assert np.abs(short - whole).max() > 1e-3
