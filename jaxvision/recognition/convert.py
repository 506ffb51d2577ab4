"""dlib's face-recognition ResNet file -> flax variables for `dlib_resnet`.

    jaxvision convert --model dlib_resnet auto runs/dlib        # the installed package's file
    jaxvision convert --model dlib_resnet my/dlib_face_recognition_resnet_model_v1.dat runs/dlib
    jaxvision embed-faces photos/ --json faces.json --checkpoint runs/dlib

The file is read by `dlib_dnn.load_dnn` (pure byte arithmetic, no code runs). The converter
then walks the file's layers from the input up beside the layout that `dlib_resnet`'s
architecture implies (`expected_layout`), so a file of another dlib network (another
depth, other strides or paddings, tags in other places) is refused with the index and
kind of the first layer that differs, rather than loaded into the wrong places.

"auto" finds `dlib_face_recognition_resnet_model_v1.dat` in the installed
`face-recognition-models` package (the optional extra `jaxvision[dlib]`) without importing
it (its __init__ needs pkg_resources).
"""
from __future__ import annotations

import os

import numpy as np

from jaxvision.core.dlib_format import package_models_dir  # the installed .dat files
from jaxvision.core.errors import WeightsError
from jaxvision.core.registry import register_converter
from jaxvision.recognition.dlib_dnn import DlibNet, load_dnn
from jaxvision.recognition.models import DLIB_MEAN, DLIB_UNITS

DLIB_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = ("dlib's face-recognition model ships in the face-recognition-models "
                "package: pip install 'jaxvision[dlib]' (or pip install face-recognition-models)")




def default_dlib_file() -> str:
  d = package_models_dir()
  path = os.path.join(d, DLIB_FILE) if d else ""
  if not (path and os.path.isfile(path)):
    raise WeightsError(f"{DLIB_FILE} not found: {INSTALL_HINT}")
  return path


def load_dlib_resnet(source: str = "auto") -> DlibNet:
  """The parsed network of `source`: "auto" (the installed package's file) or a path."""
  if source in ("auto", "dlib", "face-recognition-models"):
    source = default_dlib_file()
  if not os.path.isfile(source):
    raise WeightsError(f"{source}: no such file (give a {DLIB_FILE} or 'auto')")
  return load_dnn(source)


def expected_layout(units=DLIB_UNITS, embed_dim: int = 128, stem: int = 32) -> list[tuple]:
  """[(kind, attrs to check, flax module path or None)] of `dlib_resnet` from the input up,
  in the order dlib serialises it (tags and skips as "tag")."""
  out = [("input", {"size": (150, 150)}, None),
         ("con", {"filters": stem, "size": (7, 7), "stride": (2, 2), "padding": (0, 0)},
          ("stem_conv",)),
         ("affine", {}, ("stem_affine",)), ("relu", {}, None),
         ("max_pool", {"size": (3, 3), "stride": (2, 2), "padding": (0, 0)}, None)]
  for i, (f, down) in enumerate(units):
    u = f"unit{i}"
    s, p = (2, 0) if down else (1, 1)
    out += [("tag", {}, None),
            ("con", {"filters": f, "size": (3, 3), "stride": (s, s), "padding": (p, p)},
             (u, "conv1")),
            ("affine", {}, (u, "affine1")), ("relu", {}, None),
            ("con", {"filters": f, "size": (3, 3), "stride": (1, 1), "padding": (1, 1)},
             (u, "conv2")),
            ("affine", {}, (u, "affine2"))]
    if down:  # tag2, skip1, avg_pool 2x2/2
      out += [("tag", {}, None), ("tag", {}, None),
              ("avg_pool", {"size": (2, 2), "stride": (2, 2), "padding": (0, 0)}, None)]
    out += [("add_prev", {}, None), ("relu", {}, None)]
  out += [("avg_pool", {"size": (0, 0), "stride": (1, 1), "padding": (0, 0)}, None),
          ("fc", {"outputs": embed_dim, "bias": False}, ("fc",))]
  return out


def _describe(kind, attrs) -> str:
  return kind + (f" {attrs}" if attrs else "")


def dlib_net_to_variables(net: DlibNet, what: str = "dlib file") -> dict:
  """The `dlib_resnet` variables of a parsed dlib network (WeightsError when its structure
  is not the face ResNet's)."""
  layout = expected_layout()
  if len(net.layers) != len(layout):
    raise WeightsError(f"{what}: {len(net.layers)} layers, dlib_resnet has {len(layout)} "
                       "(another dlib network?)")
  mean = net.layers[0].arrays["mean"]
  if not np.allclose(mean, DLIB_MEAN, atol=1e-3):
    raise WeightsError(f"{what}: input mean {np.round(mean, 3).tolist()}, dlib_resnet "
                       f"subtracts {list(DLIB_MEAN)}")
  params: dict = {}
  prev_c = 3
  for i, (layer, (kind, attrs, path)) in enumerate(zip(net.layers, layout)):
    have = {k: layer.attrs.get(k) for k in attrs}
    if layer.kind != kind or have != attrs:
      raise WeightsError(f"{what}: layer {i} is {_describe(layer.kind, layer.attrs)}, "
                         f"dlib_resnet expects {_describe(kind, attrs)}")
    if path is None:
      continue
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    a = layer.arrays
    if kind == "con":
      f = a["filters"]
      if f.shape[1] != prev_c:
        raise WeightsError(f"{what}: layer {i} takes {f.shape[1]} channels, not {prev_c}")
      node[path[-1]] = {"kernel": np.ascontiguousarray(f.transpose(2, 3, 1, 0)),
                        "bias": a["bias"]}
      prev_c = f.shape[0]  # a unit's sum has the conv branch's channels (>= the shortcut's)
    elif kind == "affine":
      node[path[-1]] = {"scale": a["gamma"], "bias": a["beta"]}
      if a["gamma"].size != prev_c:
        raise WeightsError(f"{what}: layer {i} scales {a['gamma'].size} channels, not {prev_c}")
    elif kind == "fc":
      node[path[-1]] = {"kernel": a["weights"]}
  out = {"params": params}
  n = sum(np.size(v) for v in _leaves(params))
  if n != net.file_param_count:
    raise WeightsError(f"{what}: {n} parameters mapped of the file's {net.file_param_count}")
  return out


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


@register_converter(
    "dlib_resnet", task="face_embedding", load=load_dlib_resnet,
    help="dlib's face-recognition ResNet (IN: auto for the installed face-recognition-models "
    f"package's {DLIB_FILE}, or a path to that file) -> a workdir for embed-faces --checkpoint")
def convert_dlib_resnet(net, **model_kwargs) -> dict:
  """Converter: a parsed `DlibNet` (what `load_dlib_resnet` returns) -> flax variables."""
  if model_kwargs:
    raise WeightsError(f"dlib_resnet takes no --kwargs for the released file "
                       f"(got {', '.join(model_kwargs)})")
  if not isinstance(net, DlibNet):
    raise WeightsError("dlib_resnet converts a dlib .dat file (give its path or 'auto')")
  return dlib_net_to_variables(net)


def dlib_resnet_variables(source: str = "auto") -> dict:
  """The released dlib_resnet variables, converted on the fly (0.1 s) from `source`."""
  net = load_dlib_resnet(source)
  return dlib_net_to_variables(net, source)


# ---------------------------------------------------------------- FaceNet (facenet-pytorch)
FACENET_STEM = {"conv1a": "conv2d_1a", "conv2a": "conv2d_2a", "conv2b": "conv2d_2b",
                "conv3b": "conv2d_3b", "conv4a": "conv2d_4a", "conv4b": "conv2d_4b",
                "bottleneck": "last_linear", "bottleneck_bn": "last_bn"}


def _facenet_prefix(name: str, repeats) -> str:
  """facenet-pytorch's module path of one of our InceptionResNetV1 submodules: blocks
  `block35_i` / `block17_i` / `block8_i` -> repeat_1.i / repeat_2.i / repeat_3.i (the last
  block8, without ReLU, -> block8), reductions `ra_*` / `rb_*` -> mixed_6a / mixed_7a, and
  inside them b{k} -> branch{k}, b{k}_{j} -> branch{k}.{j}, up -> conv2d."""
  if name in FACENET_STEM:
    return FACENET_STEM[name]
  for ours, theirs, n in (("block35_", "repeat_1", repeats[0]),
                          ("block17_", "repeat_2", repeats[1]),
                          ("block8_", "repeat_3", repeats[2])):
    if name.startswith(ours):
      i = int(name[len(ours):])
      return "block8" if ours == "block8_" and i == n else f"{theirs}.{i}"
  for ours, theirs in (("ra_", "mixed_6a."), ("rb_", "mixed_7a.")):
    if name.startswith(ours):
      return theirs + _facenet_branch(name[len(ours):])
  return _facenet_branch(name)


def _facenet_branch(name: str) -> str:
  if name == "up":
    return "conv2d"
  head, _, tail = name.partition("_")
  return f"branch{head[1:]}" + (f".{tail}" if tail else "")


def _fold_bn(sd, prefix: str, linear: np.ndarray, used: set, out_axis: int):
  """(linear * gamma, {"bias": beta}, {"mean": mean * gamma, "var": var}) of a bias-free
  linear layer followed by a torch batch norm with a scale (affine=True), for our batch norm
  without one (facenet's slim convention, use_scale=False): gamma (W x - mu) / sqrt(var +
  eps) = (gamma W x - gamma mu) / sqrt(var + eps), exact for any gamma."""
  from jaxvision.core.weights import take
  c = linear.shape[out_axis]
  keys = {k: f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")}
  g, b, mu, var = (take(sd, keys[k], (c,)).astype(np.float32) for k in keys)
  used.update(keys.values())
  shape = [1] * linear.ndim
  shape[out_axis] = c
  return (linear * g.reshape(shape), {"bias": b}, {"mean": mu * g, "var": var})


@register_converter(
    "facenet_inception_resnet_v1", task="face_embedding",
    help="facenet-pytorch's InceptionResnetV1 state_dict (torch.save(model.state_dict()); "
    "read with weights_only) -> a workdir for embed-faces --checkpoint (its classifier "
    "`logits.*` is left out; batch norm scales are folded into the convolutions)")
def convert_facenet(sd, **model_kwargs) -> dict:
  """Converter: facenet-pytorch `InceptionResnetV1` (classify=False or True) -> our
  `facenet_inception_resnet_v1` variables (params + batch_stats), eval-mode exact.

  Their layout is ours module for module (both follow davidsandberg/facenet's
  inception_resnet_v1.py); what differs: NCHW (O, I, kh, kw) kernels vs HWIO, Linear
  (out, in) vs Dense (in, out), and torch's batch norm has a scale where slim's (ours) has
  none, so the scale is folded into the preceding bias-free convolution or Linear
  (`_fold_bn`). Their input is fixed_image_standardization's (x - 127.5) / 128 outside the
  model, ours inside it (pixels in [0, 255]). A state dict of another depth is refused
  with the blocks it has (give --kwargs repeats=(a,b,c) to convert a shortened one)."""
  import jax
  import jax.numpy as jnp

  from jaxvision.core.weights import check_all_used, take
  from jaxvision.recognition.models import facenet_inception_resnet_v1
  if model_kwargs.get("num_classes"):
    raise WeightsError("facenet_inception_resnet_v1: converted weights embed; num_classes "
                       "(a training head) cannot come from them")
  model = facenet_inception_resnet_v1(**model_kwargs)
  repeats = tuple(model.repeats)
  have = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"repeat_{j}.")})
               for j in (1, 2, 3))
  if have != repeats:
    raise WeightsError(f"state dict has {have[0]}/{have[1]}/{have[2]} blocks in repeat_1/2/3, "
                       f"the model {repeats[0]}/{repeats[1]}/{repeats[2]} (facenet-pytorch's "
                       "InceptionResnetV1 has 5/10/5; not one of its state dicts?)")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 160, 160, 3), jnp.float32)))
  used: set[str] = set()
  params: dict = {}
  stats: dict = {}

  def conv_kernel(key, shape):
    kh, kw, i, o = shape
    used.add(key)
    return np.ascontiguousarray(take(sd, key, (o, i, kh, kw)).transpose(2, 3, 1, 0))

  def walk(tree, path, prefix, p_out, s_out):
    for name, sub in tree.items():
      pre = f"{prefix}.{_facenet_branch(name)}" if prefix else _facenet_prefix(name, repeats)
      if name == "bottleneck":
        o_in, o_out = sub["kernel"].shape
        k = take(sd, f"{pre}.weight", (o_out, o_in)).T
        used.add(f"{pre}.weight")
        lin, bn_p, bn_s = _fold_bn(sd, "last_bn", np.ascontiguousarray(k), used, 1)
        p_out["bottleneck"] = {"kernel": lin}
        p_out["bottleneck_bn"], s_out["bottleneck_bn"] = bn_p, bn_s
      elif name == "bottleneck_bn":
        continue  # filled with the bottleneck
      elif set(sub) == {"conv", "bn"}:  # a ConvBN
        k = conv_kernel(f"{pre}.conv.weight", sub["conv"]["kernel"].shape)
        lin, bn_p, bn_s = _fold_bn(sd, f"{pre}.bn", k, used, 3)
        p_out[name] = {"conv": {"kernel": lin}, "bn": bn_p}
        s_out[name] = {"bn": bn_s}
      elif name == "up":  # the block's 1x1 projection, with bias
        k = conv_kernel(f"{pre}.weight", sub["kernel"].shape)
        used.add(f"{pre}.bias")
        p_out[name] = {"kernel": k, "bias": take(sd, f"{pre}.bias", (k.shape[-1],))}
      else:
        walk(sub, path + (name,), pre, p_out.setdefault(name, {}), s_out.setdefault(name, {}))

  walk(shapes["params"], (), "", params, stats)
  check_all_used(sd, used, ignore=lambda k: k.endswith("num_batches_tracked")
                 or k.startswith("logits."))
  out = {"params": params, "batch_stats": stats}
  got = jax.tree.map(np.shape, out)
  want = jax.tree.map(lambda s: tuple(s.shape), shapes)
  if got != want:
    raise WeightsError("facenet_inception_resnet_v1: converted variables do not have the "
                       "model's shapes")
  return jax.tree.map(lambda a: np.asarray(a, np.float32), out)
