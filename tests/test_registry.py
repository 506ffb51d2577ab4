"""Registry sweep (timm-style): every registered model initialises, runs forward and
backward at a small size with finite outputs and gradients, and its parameter count at
the default arguments is the one in PARAM_COUNTS (counted with jax.eval_shape: no compute).

The counts of resnet50 and se_resnet50 equal timm's (25,557,032 and 28,088,024); the
others pin the architectures against accidental change (a refactor that changes a count
changes a model). A newly registered model fails here until it has a row in each table.
"""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import models

# name: (small kwargs for the forward/backward sweep, input shape (N, H, W, C))
SMALL = {
    "can": ({"width": 4, "depth": 3}, (1, 16, 16, 3)),
    "can24": ({"width": 4}, (1, 16, 16, 3)),
    "can32": ({"width": 4}, (1, 16, 16, 3)),
    "bmshj2018-factorized": ({"quality": 1, "N": 8, "M": 8}, (1, 64, 64, 3)),
    "bmshj2018-hyperprior": ({"quality": 1, "N": 8, "M": 8}, (1, 64, 64, 3)),
    "mbt2018-mean": ({"quality": 1, "N": 8, "M": 8}, (1, 64, 64, 3)),
    "mbt2018": ({"quality": 1, "N": 8, "M": 8}, (1, 64, 64, 3)),
    "mtcnn-pnet": ({}, (1, 12, 12, 3)),
    "mtcnn-rnet": ({}, (1, 24, 24, 3)),
    "mtcnn-onet": ({}, (1, 48, 48, 3)),
    "cascade-12net": ({}, (1, 12, 12, 3)),
    "cascade-24net": ({}, (1, 24, 24, 3)),
    "cascade-48net": ({}, (1, 48, 48, 3)),
    "cascade-12cal": ({}, (1, 12, 12, 3)),
    "cascade-24cal": ({}, (1, 24, 24, 3)),
    "cascade-48cal": ({}, (1, 48, 48, 3)),
    "spp_net": ({"num_classes": 3, "widths": (8, 8, 8, 8, 8), "fc_dim": 16}, (1, 64, 64, 3)),
    "vgg16": ({"width": 0.0625}, (1, 32, 32, 3)),
    "vgg19": ({"width": 0.0625}, (1, 32, 32, 3)),
    "johnson": ({"width": 4, "num_residual": 1}, (1, 16, 16, 3)),
    "texture_net": ({"scales": 2, "width": 2}, (1, 16, 16, 3)),
    "espcn": ({"scale": 2, "features": (8, 4)}, (1, 8, 8, 3)),
    "edsr_baseline": ({"scale": 2, "n_resblocks": 1, "n_feats": 8}, (1, 8, 8, 3)),
    "edsr": ({"scale": 2, "n_resblocks": 1, "n_feats": 8}, (1, 8, 8, 3)),
    "wdsr_a": ({"scale": 2, "n_resblocks": 1, "n_feats": 8}, (1, 8, 8, 3)),
    "wdsr_b": ({"scale": 2, "n_resblocks": 1, "n_feats": 8}, (1, 8, 8, 3)),
    "rcan": ({"scale": 2, "n_resgroups": 1, "n_resblocks": 1, "n_feats": 8, "reduction": 4},
             (1, 8, 8, 3)),
    "johnson_sr": ({"scale": 4, "features": 8, "n_resblocks": 1}, (1, 8, 8, 3)),
    # recognition: normalize=False where the model L2-normalises (the gradient of a sum of
    # squares of a unit vector is zero)
    "dlib_resnet": ({"units": ((4, False), (8, True)), "stem_features": 4, "embed_dim": 8},
                    (1, 32, 32, 3)),
    "deepface": ({"widths": (2,) * 6, "embed_dim": 8, "normalize": False}, (1, 73, 73, 3)),
    "deepid": ({"widths": (2, 2, 2, 2), "embed_dim": 8}, (1, 39, 31, 3)),
    "facenet_inception_resnet_v1": ({"repeats": (1, 1, 1), "embed_dim": 8, "normalize": False},
                                    (1, 75, 75, 3)),
    "openface_nn4_small2": ({"embed_dim": 8, "normalize": False}, (1, 32, 32, 3)),
    # landmarks
    "dlib_ert_68": ({"num_cascades": 2, "num_trees": 3, "depth": 2, "num_features": 4},
                    (1, 16, 16, 3)),
    "dlib_ert_5": ({"num_cascades": 2, "num_trees": 3, "depth": 2, "num_features": 4},
                   (1, 16, 16, 3)),
    "pfld": ({"width": 0.25, "input_size": 32, "repeats": (1, 1)}, (1, 32, 32, 3)),
    "cfan": ({"input_size": 32, "global_size": 8, "num_stages": 1, "global_hidden": (8,),
              "local_hidden": (8,)}, (1, 32, 32, 3)),
    "facemesh": ({"width": 0.125}, (1, 192, 192, 3)),   # 192 x 192 in, as the file has it
    # denoising and deep ISP
    "dncnn": ({"depth": 3, "features": 4}, (1, 16, 16, 3)),
    "n2n_unet": ({"features": 4}, (1, 32, 32, 3)),
    "hdrnet": ({"lowres": 16, "n_splat": 1, "features": 4, "fc": (8,)}, (1, 16, 16, 3)),
    "sid_unet": ({"features": 2}, (1, 16, 16, 4)),
}
# Models whose small forward/backward compiles for tens of seconds: in the longrun group.
LONG_SWEEP = {"facenet_inception_resnet_v1", "openface_nn4_small2", "n2n_unet", "pfld"}
# Left out of the forward/backward sweep (its compile is 30 s of CI for each) because
# another test already takes their gradient or they have none to take:
SWEPT_ELSEWHERE = {
    "sid_unet": "tests/denoise/test_sid.py trains it (loss lowered: finite gradients)",
    "facemesh": "converted MediaPipe weights, inference only; forward in test_facemesh.py"}
for _n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "se_resnet18",
           "se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152", "se_resnext50_32x4d",
           "se_resnext101_32x4d", "spp_resnet18"):
  # one block per stage: the block kind (basic/bottleneck, SE, groups) is what differs in
  # the sweep; each depth is pinned by the parameter count below
  SMALL[_n] = ({"num_classes": 3, "width": 8, "layers": (1, 1, 1, 1)}, (1, 32, 32, 3))
for _n in ("se_resnext50_32x4d", "se_resnext101_32x4d"):  # 4 groups of 8 channels
  SMALL[_n][0].update(groups=4, base_width=16)

# Parameter counts at the default arguments, RGB input. From outside: resnet50 and
# se_resnet50 are timm's, vgg16 torchvision's features, the MTCNN nets the original
# release's (6,632 / 100,178 / 389,040), edsr the EDSR paper's x2 model (40.7M).
PARAM_COUNTS = {
    "bmshj2018-factorized": 2_998_147,
    "bmshj2018-hyperprior": 5_075_843,
    "can": 37_219,
    "can24": 37_219,
    "can32": 65_747,
    "cascade-12cal": 57_581,
    "cascade-12net": 6_898,
    "cascade-24cal": 210_221,
    "cascade-24net": 831_346,
    "cascade-48cal": 5_427_565,
    "cascade-48net": 2_266_546,
    "edsr": 40_729_603,
    "edsr_baseline": 1_369_859,
    "espcn": 26_796,
    "johnson": 1_679_235,
    "johnson_sr": 401_859,
    "mbt2018": 14_130_467,
    "mbt2018-mean": 7_028_003,
    "mtcnn-onet": 389_040,
    "mtcnn-pnet": 6_632,
    "mtcnn-rnet": 100_178,
    "rcan": 15_444_643,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "se_resnet101": 49_326_872,
    "se_resnet152": 66_821_848,
    "se_resnet18": 11_779_624,
    "se_resnet34": 21_960_416,
    "se_resnet50": 28_088_024,
    "se_resnext101_32x4d": 48_955_416,
    "se_resnext50_32x4d": 27_559_896,
    "spp_net": 77_037_672,
    "spp_resnet18": 36_777_512,
    "texture_net": 72_739,
    "vgg16": 14_714_688,
    "vgg19": 20_024_384,
    "wdsr_a": 1_190_100,
    "wdsr_b": 303_604,
    # recognition: openface's is the count its .def.lua states; deepface without the
    # 4030-way identity layer (about 119 M with it, the paper's figure)
    "dlib_resnet": 5_614_592,
    "deepface": 102_412_864,
    "deepid": 151_800,
    "facenet_inception_resnet_v1": 23_467_824,
    "openface_nn4_small2": 3_733_968,
    # landmarks: the ERT counts are the cascades' split thresholds, feature offsets and leaf
    # values at dlib's shapes (15 cascades x 500 trees of depth 4)
    "dlib_ert_68": 16_447_636,
    "dlib_ert_5": 1_336_510,
    "pfld": 1_681_451,
    # CFAN at the paper's sizes as recalled: a 50 x 50 global SAN 2500-1600-900-400-136 and
    # three local SANs 2176 (68 points x 32 descriptor values)-1600-900-400-136
    "cfan": 21_874_544,
    # MediaPipe's face_landmark.tflite: the sum of its 113 float constants
    "facemesh": 604_685,
    # denoising: from the papers' layer tables (DnCNN RGB, Noise2Noise's U-Net, HDRNet)
    "dncnn": 558_403,
    "n2n_unet": 991_203,
    "hdrnet": 482_080,
    "sid_unet": 7_760_268,   # Chen et al. 2018's U-Net on packed 4-channel Bayer input
}

DEFAULT_INPUT = {"mtcnn-pnet": (1, 12, 12, 3), "mtcnn-rnet": (1, 24, 24, 3),
                 "mtcnn-onet": (1, 48, 48, 3), "cascade-12net": (1, 12, 12, 3),
                 "cascade-24net": (1, 24, 24, 3), "cascade-48net": (1, 48, 48, 3),
                 "cascade-12cal": (1, 12, 12, 3), "cascade-24cal": (1, 24, 24, 3),
                 "cascade-48cal": (1, 48, 48, 3),
                 "deepface": (1, 152, 152, 3), "deepid": (1, 39, 31, 3),
                 "facenet_inception_resnet_v1": (1, 160, 160, 3), "sid_unet": (1, 32, 32, 4)}


def _call_kwargs(model, train):
  params = inspect.signature(type(model).__call__).parameters
  return {"train": train} if "train" in params else {}


def _init(model, shape):
  x = jnp.zeros(shape, jnp.float32)
  return model.init(jax.random.key(0, impl="rbg"), x, **_call_kwargs(model, False))


def _floats(tree):
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]


def test_every_model_is_in_the_tables():
  names = set(models.list_models())
  assert names == set(SMALL), (sorted(names - set(SMALL)), sorted(set(SMALL) - names))
  assert names == set(PARAM_COUNTS), (sorted(names - set(PARAM_COUNTS)),
                                      sorted(set(PARAM_COUNTS) - names))


def _same_modules() -> dict[str, str]:
  """{name: an earlier name} for the registered names that, at SMALL's arguments and input,
  build the very module another does (a flax module is a dataclass: equal fields, equal
  program): resnet50/101/152 with one block per stage are one network. Their sweep would
  compile the same program again; `test_same_module_as_a_swept_one` pins the equality and
  test_parameter_count each depth."""
  same, firsts = {}, []
  for n in sorted(SMALL):
    if n in SWEPT_ELSEWHERE:
      continue
    m = models.create(n, **SMALL[n][0])
    twin = next((f for f, fm in firsts if type(fm) is type(m) and fm == m
                 and SMALL[f][1] == SMALL[n][1]), None)
    if twin is None:
      firsts.append((n, m))
    else:
      same[n] = twin
  return same


SAME_AS = _same_modules()


def test_same_module_as_a_swept_one():
  assert SAME_AS, "no twins: the sweep below runs every name"
  for name, twin in SAME_AS.items():
    assert twin not in SAME_AS and twin not in SWEPT_ELSEWHERE
    a, b = models.create(name, **SMALL[name][0]), models.create(twin, **SMALL[twin][0])
    assert type(a) is type(b) and a == b, (name, twin)
    assert models.create(name) != models.create(twin), f"{name} is {twin} at any size"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.longrun) if n in LONG_SWEEP
                                  else n for n in sorted(SMALL)
                                  if n not in SWEPT_ELSEWHERE and n not in SAME_AS])
def test_forward_backward_finite(name):
  kwargs, shape = SMALL[name]
  model = models.create(name, **kwargs)
  x = jax.random.uniform(jax.random.key(1, impl="rbg"), shape)
  variables = jax.jit(lambda: _init(model, shape))()
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  call = _call_kwargs(model, False)

  def loss(p):
    out = model.apply({"params": p, **rest}, x, **call)
    return sum(jnp.mean(jnp.square(o.astype(jnp.float32))) for o in _floats(out)), out

  (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert _floats(out), f"{name}: no float output"
  for o in _floats(out):
    assert np.isfinite(np.asarray(o)).all(), f"{name}: non-finite output"
  g = [np.asarray(v) for v in jax.tree.leaves(grads)]
  assert all(np.isfinite(v).all() for v in g), f"{name}: non-finite gradient"
  assert sum(float(np.abs(v).sum()) for v in g) > 0, f"{name}: all gradients are zero"
  assert np.isfinite(float(value))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_parameter_count(name):
  model = models.create(name)
  shape = DEFAULT_INPUT.get(name, (1, 64, 64, 3))
  shapes = jax.eval_shape(lambda: _init(model, shape))
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
  assert n == PARAM_COUNTS[name], f"{name}: {n:,} parameters, the table says {PARAM_COUNTS[name]:,}"
