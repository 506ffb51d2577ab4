"""DnCNN and the Noise2Noise U-Net: the papers' layer tables give the parameter counts;
shapes for any input size; DnCNN's residual form; the U-Net's padding to 32."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.core import registry
from jaxvision.denoise import models  # noqa: F401  (registers)
from jaxvision.denoise.models import count_params


def _conv(cin, cout, bias=True):
  return 9 * cin * cout + (cout if bias else 0)


def test_dncnn_parameter_count_from_the_paper():
  # 17 layers: conv+ReLU, 15 x (conv (no bias) + BN (scale, shift) + ReLU), conv.
  for c in (1, 3):
    m = registry.create_model("dncnn", channels=c)
    v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, c)))
    expect = _conv(c, 64) + 15 * (_conv(64, 64, False) + 2 * 64) + _conv(64, c)
    assert count_params(v) == expect
    assert len([k for k in v["params"] if k.startswith("conv")]) == 17
  assert expect == 558_403


def test_n2n_unet_parameter_count_from_table_2():
  m = registry.create_model("n2n_unet")
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  expect = (_conv(3, 48) + 6 * _conv(48, 48)            # enc_conv0 .. enc_conv6
            + _conv(96, 96) + _conv(96, 96)             # dec5: upsample(48) ++ pool4(48)
            + 3 * (_conv(144, 96) + _conv(96, 96))      # dec4..2: 96 ++ 48
            + _conv(96 + 3, 64) + _conv(64, 32) + _conv(32, 3))  # dec1: 96 ++ input
  assert count_params(v) == expect == 991_203


@pytest.mark.parametrize("name", ["dncnn", "n2n_unet"])
@pytest.mark.parametrize("hw", [(37, 50)])
def test_shapes_any_size(name, hw):
  kw = {"depth": 5, "features": 8} if name == "dncnn" else {"features": 8}
  m = registry.create_model(name, **kw)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, *hw, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  y = m.apply(v, x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert np.isfinite(np.asarray(y)).all()


def test_dncnn_is_input_minus_predicted_noise():
  m = registry.create_model("dncnn", depth=4, features=8, zero_init_last=False)
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 24, 24, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  assert float(jnp.abs(m.apply(v, x) - x).max()) > 1e-3  # a non-zero residual
  r = registry.create_model("dncnn", depth=4, features=8, residual=False)
  init = registry.create_model("dncnn", depth=4, features=8)
  np.testing.assert_array_equal(init.apply(init.init(jax.random.PRNGKey(0), x), x), x)
  np.testing.assert_allclose(m.apply(v, x), x - r.apply(v, x), atol=1e-6)


def test_dncnn_train_mode_updates_batch_stats_and_is_local():
  m = registry.create_model("dncnn", depth=4, features=8, zero_init_last=False)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 40, 40, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  _, new = m.apply(v, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(new["batch_stats"]["bn2"]["mean"], v["batch_stats"]["bn2"]["mean"])
  # a change at one pixel moves the output only within receptive_radius() of it
  d = m.apply(v, x.at[:, 20, 20].add(1.0)) - m.apply(v, x)
  ys, xs = np.nonzero(np.abs(np.asarray(d[0])).max(-1) > 0)
  r = m.receptive_radius()
  assert ys.min() >= 20 - r and ys.max() <= 20 + r and xs.min() >= 20 - r


def test_unet_pads_to_32_like_reflecting_the_input():
  m = registry.create_model("n2n_unet", features=8)
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 40, 45, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  big = jnp.pad(x, ((0, 0), (0, 24), (0, 19), (0, 0)), mode="reflect")
  np.testing.assert_allclose(m.apply(v, x), m.apply(v, big)[:, :40, :45], atol=1e-6)


def test_sid_unet_parameter_count_from_the_layer_list():
  m = registry.create_model("sid_unet")
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 4)))
  widths, expect, cin = (32, 64, 128, 256, 512), 0, 4
  for c in widths:                                   # conv1 .. conv5: two 3x3 each
    expect += _conv(cin, c) + _conv(c, c)
    cin = c
  for c in widths[-2::-1]:                           # up6 .. up9 (2x2, no bias) + conv6 .. 9
    expect += 4 * cin * c + _conv(2 * c, c) + _conv(c, c)
    cin = c
  expect += 32 * 12 + 12                             # conv10: 1x1 to 12 channels
  assert count_params(v) == expect == 7_760_268


def test_sid_unet_doubles_the_packed_size_in_tensorflows_depth_to_space_order():
  x = jnp.arange(2 * 3 * 12, dtype=jnp.float32).reshape(1, 2, 3, 12)
  y = np.asarray(models.depth_to_space(x, 2))
  xn = np.asarray(x)
  for i in range(2):
    for j in range(2):  # tf.depth_to_space: out[2y+i, 2x+j, c] = in[y, x, (2i+j)*3 + c]
      np.testing.assert_array_equal(y[0, i::2, j::2], xn[0, :, :, (2 * i + j) * 3:(2 * i + j + 1) * 3])
  m = registry.create_model("sid_unet", features=2)
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 10, 14, 4))  # not a multiple of 16
  # shapes only (no compile: the numbers are the registry sweep's and the SID run's)
  out = jax.eval_shape(lambda x: m.apply(m.init(jax.random.PRNGKey(0), x), x), x)
  assert out.shape == (1, 20, 28, 3) and out.dtype == jnp.float32
