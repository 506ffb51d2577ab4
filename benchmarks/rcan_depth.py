"""RCAN's train-step compile time by depth, scanned or unrolled (issue 14).

    python benchmarks/rcan_depth.py GROUPS BLOCKS scan|noscan

One Adam step of the L1 loss of RCAN x4 on a 12x12 input (batch 1), parameters and
optimizer state as shapes only (nothing runs); prints trace+lower and XLA compile seconds.
The figures in BENCHMARKS.md ran each configuration in a fresh process, cache off.
"""
import os
import sys
import time

os.environ.setdefault("JAXVISION_COMPILE_CACHE", "0")
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from jaxvision.superres import models as m  # noqa: E402

g, b = int(sys.argv[1]), int(sys.argv[2])
net = m.rcan(scale=4, n_resgroups=g, n_resblocks=b, scan=sys.argv[3] == "scan")
x = jnp.zeros((1, 12, 12, 3))
y = jnp.zeros((1, 48, 48, 3))
v = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
tx = optax.adam(1e-4)
o = jax.eval_shape(tx.init, v)


def step(v, o, x, y):
  loss, grad = jax.value_and_grad(lambda v: jnp.mean(jnp.abs(net.apply(v, x) - y)))(v)
  u, o = tx.update(grad, o, v)
  return optax.apply_updates(v, u), o, loss


t = time.time()
lowered = jax.jit(step).lower(v, o, x, y)
t1 = time.time()
lowered.compile()
print(sys.argv[1:], "lower %.1f compile %.1f" % (t1 - t, time.time() - t1))
