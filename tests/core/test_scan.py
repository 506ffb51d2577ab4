"""Scanned blocks (jaxvision.core.scan) against the plain loop of submodules they replace:
the same variables (so old checkpoints and converted weights load), the same outputs,
gradients and batch statistics; a program whose size does not grow with depth; model FLOPs
counted through the scan (jaxvision.core.flops)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision.classification import models as cm
from jaxvision.core import flops
from jaxvision.style import generators
from jaxvision.superres import models as sm

X = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))

MODELS = {
    "edsr_baseline": lambda **k: sm.edsr_baseline(scale=2, n_resblocks=3, n_feats=8, **k),
    "wdsr_a": lambda **k: sm.wdsr_a(scale=2, n_resblocks=2, n_feats=4, **k),
    "wdsr_b": lambda **k: sm.wdsr_b(scale=3, n_resblocks=2, n_feats=4, **k),
    "rcan": lambda **k: sm.rcan(scale=2, n_resgroups=2, n_resblocks=2, n_feats=8, reduction=4,
                                **k),
    "se_resnet": lambda **k: cm.ResNet(layers=(1, 3), width=4, num_classes=5, se=True,
                                       stem="cifar", input_norm="none", **k),
    "resnet_basic": lambda **k: cm.ResNet(layers=(3,), bottleneck=False, width=4,
                                          num_classes=5, stem="cifar", **k),
    "johnson": lambda **k: generators.Johnson(width=2, num_residual=3, **k),
}


def _rel(a, b) -> float:
  """Largest difference over the largest magnitude of the whole tree (a bias in front of a
  norm has a zero gradient: leaf-wise relative errors would be noise over noise)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  scale = max(float(jnp.abs(q).max()) for q in lb) + 1e-30
  return max(float(jnp.abs(p - q).max()) for p, q in zip(la, lb)) / scale


def _outputs(model, v):
  """(inference output, training output, new batch stats, gradient), in one program."""
  def run(v):
    def f(params):
      w = {**v, "params": params}
      if "batch_stats" in v:
        y, new = model.apply(w, X, train=True, mutable=["batch_stats"])
      else:
        y, new = model.apply(w, X), {}
      return jnp.mean(jnp.square(y.astype(jnp.float32) - 0.3)), (y, new)
    (_, (y_train, stats)), g = jax.value_and_grad(f, has_aux=True)(v["params"])
    y_eval = model.apply(v, X, train=False) if "batch_stats" in v else y_train
    return y_eval, y_train, stats, g
  return jax.jit(run)(v), run


# One in the README's test run (batch norm written back per block), all in longrun.
QUICK = ("resnet_basic",)


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.longrun)
                                  for n in sorted(MODELS)])
def test_scanned_equals_unrolled(name):
  scanned, unrolled = MODELS[name](), MODELS[name](scan=False)
  v = scanned.init(jax.random.PRNGKey(1), X)
  vu = jax.eval_shape(unrolled.init, jax.random.PRNGKey(1), X)
  # the same layout: a checkpoint of the loop (the code before scanning) loads as it is
  assert jax.tree.structure(v) == jax.tree.structure(vu)
  assert [a.shape for a in jax.tree.leaves(v)] == [a.shape for a in jax.tree.leaves(vu)]
  (ye, yt, st, g), run_s = _outputs(scanned, v)
  (ye_u, yt_u, st_u, g_u), run_u = _outputs(unrolled, v)
  assert _rel(ye, ye_u) < 1e-5 and _rel(yt, yt_u) < 1e-5
  if st:
    assert _rel(st, st_u) < 1e-5  # running statistics written back per block
  assert _rel(g, g_u) < 1e-4
  # model FLOPs through the scan: the same count as the unrolled program's
  assert flops.count_flops(run_s, v) == flops.count_flops(run_u, v) > 0


# longrun (20 s of the README's run): remat recomputes; scanned == unrolled stays in both.
@pytest.mark.longrun
def test_remat_gives_the_same_gradients():
  model = MODELS["rcan"]
  v = model().init(jax.random.PRNGKey(1), X)
  (_, _, _, g), _ = _outputs(model(), v)
  (_, _, _, g_r), _ = _outputs(model(remat=True), v)
  assert _rel(g_r, g) < 1e-5


def _train_step_hlo(groups: int, blocks: int) -> str:
  net = sm.rcan(scale=2, n_resgroups=groups, n_resblocks=blocks, n_feats=8, reduction=4)
  x, y = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 16, 16, 3))
  v = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  tx = optax.adam(1e-4)

  def step(v, o):
    g = jax.grad(lambda v: jnp.mean(jnp.abs(net.apply(v, x) - y)))(v)
    u, o = tx.update(g, o, v)
    return optax.apply_updates(v, u), o

  return jax.jit(step).lower(v, jax.eval_shape(tx.init, v)).as_text()


def test_rcan_program_does_not_grow_with_depth():
  """RCAN's 10 groups of 20 blocks give a train step with as many convolutions as 2 groups
  of 2: the blocks are one loop body (the unrolled step did not finish compiling in 8
  minutes on XLA:CPU; BENCHMARKS.md has the compile times)."""
  count = lambda text: len(re.findall(r"stablehlo\.convolution", text))
  small, full = count(_train_step_hlo(2, 2)), count(_train_step_hlo(10, 20))
  assert small == full > 0


def test_old_per_block_checkpoint_loads(tmp_path):
  """Variables saved from the unrolled model (what workdirs from before hold) restore into
  the scanned one through the workdir contract and give its outputs."""
  from jaxvision.core import checkpoint, weights
  from jaxvision.superres import task  # noqa: F401  (registers super_resolution)
  unrolled = sm.edsr_baseline(scale=2, n_resblocks=3, n_feats=16, scan=False)
  v = unrolled.init(jax.random.PRNGKey(3), X)
  weights.save_workdir(str(tmp_path / "w"), v, task="super_resolution",
                       model_name="edsr_baseline",
                       model_kwargs={"scale": 2, "n_resblocks": 3, "n_feats": 16})
  _, model, loaded, _ = checkpoint.load_model(str(tmp_path / "w"), "super_resolution")
  assert model.scan
  np.testing.assert_allclose(np.asarray(model.apply(loaded, X)),
                             np.asarray(unrolled.apply(v, X)), rtol=1e-5, atol=1e-5)
