"""layers.conv_general_dilated: same values and gradients as lax's autodiff."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax

from jaxvision.core.layers import conv_general_dilated

DN = ("NHWC", "HWIO", "NHWC")


@settings(max_examples=8, deadline=None)
@given(k=st.sampled_from([1, 3, 5]), kw=st.sampled_from([1, 3]), rate=st.integers(1, 4),
       h=st.integers(1, 11), w=st.integers(1, 11), padding=st.sampled_from(["SAME", "VALID"]))
def test_values_and_gradients_match_lax(k, kw, rate, h, w, padding):
  if padding == "VALID" and (h <= (k - 1) * rate or w <= (kw - 1) * rate):
    return  # empty output
  x = jax.random.normal(jax.random.PRNGKey(0), (2, h, w, 3))
  kern = jax.random.normal(jax.random.PRNGKey(1), (k, kw, 3, 4))
  ref = lambda x, kern: lax.conv_general_dilated(x, kern, (1, 1), padding,
                                                 rhs_dilation=(rate, rate), dimension_numbers=DN)
  new = lambda x, kern: conv_general_dilated(x, kern, (1, 1), padding,
                                             rhs_dilation=(rate, rate), dimension_numbers=DN)
  chex.assert_trees_all_close(new(x, kern), ref(x, kern), atol=1e-5)
  loss = lambda f: lambda x, kern: jnp.sum(jnp.sin(f(x, kern)))
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(x, kern)
  g_new = jax.jit(jax.grad(loss(new), argnums=(0, 1)))(x, kern)
  chex.assert_trees_all_close(g_new, g_ref, atol=1e-4, rtol=1e-4)


def test_explicit_padding_and_fallback():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 9, 9, 2))
  kern = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 2))
  pads = ((2, 0), (1, 3))
  np.testing.assert_allclose(
      conv_general_dilated(x, kern, (1, 1), pads, rhs_dilation=(2, 1), dimension_numbers=DN),
      lax.conv_general_dilated(x, kern, (1, 1), pads, rhs_dilation=(2, 1), dimension_numbers=DN),
      atol=1e-5)
  # strided: falls back to lax unchanged
  np.testing.assert_allclose(
      conv_general_dilated(x, kern, (2, 2), "SAME", dimension_numbers=DN),
      lax.conv_general_dilated(x, kern, (2, 2), "SAME", dimension_numbers=DN), atol=1e-6)
