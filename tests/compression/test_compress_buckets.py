"""Shape buckets and the on-device fixed-point h_s of the codecs (issue 12, items 2 and 6).

`compress`, `decompress` (and `rd`, through the same coding functions) run one program per
bucket (multiples of 64 on the core.buckets ladder) with the padding masked at every conv
input, and h_s in exact int8 x int8 -> int32 digit arithmetic on the device. Neither may
change a byte or a pixel: every file here is compared with the unbucketed path with h_s on
the host (`_old_*` below: the coding of jaxvision before buckets, from its primitives).
"""
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision import cli
from jaxvision.compression import coding, convert, files, fxdevice
from jaxvision.compression import tables as T
from jaxvision.compression.layers import EntropyBottleneck, PolyphaseConvTranspose
from jaxvision.core import io as jv_io
from jaxvision.core import weights
from jaxvision.core.compile import count_compiles
from jaxvision.core.registry import create_model
from tests.compression.reference import random_params

N, M = 8, 12
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _variables(name, seed=0, scale=1.0, n=N, m=M):
  model = create_model(name, quality=3, N=n, M=m)
  p = random_params(convert._param_shapes(model), seed)
  p = {m: {k: v * np.float32(scale) for k, v in d.items()} for m, d in p.items()}
  ch = model.N if coding.is_hyperprior(model) else model.M
  p["entropy_bottleneck"] = EntropyBottleneck(ch).solve_quantiles(p["entropy_bottleneck"])
  return model, {"params": jax.tree.map(jnp.asarray, p)}


# ------------------------------------------------ the coding before buckets (reference)
def _old_strings(model, variables, tables, x):
  out = jax.tree.map(np.asarray, coding._apply(model, variables, "_encode_net", coding.pad(x)))
  if not coding.is_hyperprior(model):
    y = out["y"]
    return [coding.encode(y, coding._channel_indexes(y.shape), *tables["y"])]
  z = out["z"]
  z_str = coding.encode(z, coding._channel_indexes(z.shape), *tables["z"])
  nets = coding.fixed_point_nets(model, variables)
  if coding.is_autoregressive(model):
    params = coding.hyper_fixed(nets, z)
    return [z_str, coding._ar_encode(nets, tables["y"], out["y_float"], params)[0]]
  idx, means = coding._fx_hyper(model, nets, z)
  y = np.asarray(coding._apply(model, variables, "_quantize_y", out["y_float"], means))
  return [z_str, coding.encode(y, idx, *tables["y"])]


def _old_decode(model, variables, tables, strings, h, w):
  want = coding.latent_shapes_for(model, h, w)
  if not coding.is_hyperprior(model):
    y = coding.decode(strings[0], coding._channel_indexes(want[0]), *tables["y"])
    x = coding._apply(model, variables, "_decode_net", y, None)
  else:
    z = coding.decode(strings[0], coding._channel_indexes(want[0]), *tables["z"])
    nets = coding.fixed_point_nets(model, variables)
    if coding.is_autoregressive(model):
      y_hat = coding._ar_decode(nets, tables["y"], strings[1], coding.hyper_fixed(nets, z))
      x = coding._apply(model, variables, "_synthesis", y_hat)
    else:
      idx, means = coding._fx_hyper(model, nets, z)
      y = coding.decode(strings[1], idx, *tables["y"])
      x = coding._apply(model, variables, "_decode_net", y, means)
  return np.clip(np.asarray(x)[:, :h, :w], 0.0, 1.0)


def _old_jvc(model, variables, tables, path, name):
  image, _ = jv_io.read_image(path)
  channels = 1 if jv_io.is_grey(path) else 3
  x = image[None].astype(np.float32) / 255.0
  strings = _old_strings(model, variables, tables, x)
  h, w = image.shape[:2]
  header = files.header_for(name, 3, h, w, channels, coding.latent_shapes_for(model, h, w),
                            T.tables_crc(tables))
  buf = io.BytesIO()
  files.write_jvc(buf, header, strings)
  return buf.getvalue(), x, channels


def _folder(root, sizes, seed):
  """PNGs of the given (h, w, mode) sizes: smooth gradients plus noise."""
  os.makedirs(root)
  rng = np.random.default_rng(seed)
  for i, (h, w, mode) in enumerate(sizes):
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 3, yy * 4, (xx + yy) * 2, 255 - xx], -1) % 256
    img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
    im = {"L": lambda: Image.fromarray(img[..., 0], "L"), "RGB": lambda: Image.fromarray(
        img[..., :3]), "RGBA": lambda: Image.fromarray(img, "RGBA")}[mode]()
    im.save(os.path.join(root, f"{i:02d}.png"))
  return sorted(os.listdir(root))


def test_codec_ladder():
  sides = [coding.bucket_side(n) for n in range(1, 4097)]
  assert all(s >= n and s % 64 == 0 for n, s in zip(range(1, 4097), sides))
  assert sides == sorted(sides) and len(set(sides)) == 20  # 64 .. 4096
  padded = lambda n: -(-n // 64) * 64
  assert max(s / padded(n) for n, s in zip(range(1, 4097), sides)) <= 1.25
  for side in (512, 640, 768, 1024, 1280, 1536, 2048):
    assert coding.bucket_side(side) == side
  assert coding.bucket_for(512, 768) == (512, 768) and coding.bucket_for(700, 1080) == (768, 1280)


# 8 images in 4 buckets: (64, 64), (128, 128), (64, 128), (64, 640); in the last one the
# bucket is wider than the padded image (530 -> 576 -> 640): masked padding
SIZES = [(37, 53, "RGB"), (64, 40, "RGB"), (70, 70, "RGB"), (100, 65, "RGB"),
         (90, 120, "L"), (50, 77, "RGBA"), (33, 530, "RGB"), (60, 517, "RGB")]
# other sizes, same buckets
MORE = [(60, 61, "RGB"), (128, 99, "RGB"), (41, 128, "L"), (20, 600, "RGB")]


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_folder_few_programs_same_bytes_and_pixels(tmp_path, name, capsys):
  model, variables = _variables(name, seed=3, scale=0.5)  # h_s inside the device's range
  work = str(tmp_path / "codec")
  weights.save_workdir(work, variables, task="compression", model_name=name,
                       model_kwargs={"quality": 3, "N": N, "M": M})
  tables = T.update(model, variables)
  buckets_seen = {coding.bucket_for(h, w) for h, w, _ in SIZES}
  assert len(buckets_seen) == 4
  src = str(tmp_path / "in")
  names = _folder(src, SIZES, 0)
  jvcs, pngs = tmp_path / "jvc", tmp_path / "png"
  host = coding.HOST_H_S["calls"]
  with count_compiles() as c:
    assert cli.main(["compress", "--checkpoint", work, src, str(jvcs)]) == 0
    assert cli.main(["decompress", "--checkpoint", work, str(jvcs), str(pngs)]) == 0
  # Per bucket: compress runs one program (encoder, h_s, estimate), decompress two (h_s,
  # then g_s after the host decoded y): 12 here. A program per image and command: 24.
  assert c.requests <= 3 * len(buckets_seen), c
  assert coding.HOST_H_S["calls"] == host  # every h_s ran on the device
  for n in names:
    want, x, channels = _old_jvc(model, variables, tables, os.path.join(src, n), name)
    got = (jvcs / n.replace(".png", ".jvc")).read_bytes()
    assert got == want, n
    h, w = x.shape[1:3]
    header, strings = files.read_jvc(want)
    y = (_old_decode(model, variables, tables, strings, h, w)[0] * 255.0 + 0.5).astype(np.uint8)
    if channels == 1:
      y = y.mean(axis=-1).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(pngs / n)), y, err_msg=n)
  assert "bytes" in capsys.readouterr().out

  # New sizes in the same buckets: nothing is compiled (or even loaded) again.
  src2 = str(tmp_path / "in2")
  _folder(src2, MORE, 1)
  with count_compiles() as c2:
    assert cli.main(["compress", "--checkpoint", work, src2, str(tmp_path / "jvc2")]) == 0
    assert cli.main(["decompress", "--checkpoint", work, str(tmp_path / "jvc2"),
                     str(tmp_path / "png2")]) == 0
  assert c2.requests == 0, c2


@pytest.mark.parametrize("name", ["bmshj2018-factorized", "mbt2018"])
def test_other_models_bucketed_equal_unbucketed(name):
  model, variables = _variables(name, seed=5)
  tables = T.update(model, variables)
  rng = np.random.default_rng(0)
  for h, w in [(37, 53), (37, 530), (700, 90)]:  # the last two: bucket > padded image
    x = rng.random((1, h, w, 3)).astype(np.float32)
    strings, shapes = coding.compress(model, variables, tables, x)
    assert strings == _old_strings(model, variables, tables, x)
    np.testing.assert_array_equal(
        coding.decompress(model, variables, tables, strings, shapes, h, w),
        _old_decode(model, variables, tables, strings, h, w))


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean", "mbt2018"])
@pytest.mark.parametrize("use_dot", [False, True])
def test_device_h_s_equals_host_integers(name, use_dot):
  """fxdevice.hyper == coding.hyper_fixed in the valid region of a bucket, whatever lies
  outside it, with the conv and the im2col-matmul form of the int8 products."""
  model, variables = _variables(name, seed=7, scale=0.5)
  nets = coding.fixed_point_nets(model, variables)
  dev = fxdevice.prepare(nets)
  assert dev is not None
  run = jax.jit(lambda a, z, h, w: fxdevice.hyper(fxdevice.static(dev), a, z, h, w, use_dot))
  arrays = fxdevice.device_arrays(dev)
  rng = np.random.default_rng(1)
  for h, w, big_h, big_w, lim in [(3, 5, 3, 5, 5), (2, 3, 4, 4, 40), (5, 7, 7, 9, 200)]:
    z = rng.integers(-lim, lim + 1, (1, h, w, N)).astype(np.int32)
    big = np.full((1, big_h, big_w, N), 99, np.int32)  # garbage outside: masked
    big[:, :h, :w] = z
    out, ok = run(arrays, big, np.int32(h), np.int32(w))
    assert bool(ok)
    np.testing.assert_array_equal(np.asarray(out)[:, :4 * h, :4 * w], coding.hyper_fixed(nets, z))


def test_out_of_range_falls_back_to_the_host_exactly():
  """Activations beyond the device scheme's 2^21 (huge weights): `ok` is False and the
  host's int64 h_s codes; the files are still those of the unbucketed host path."""
  model, variables = _variables("mbt2018-mean", seed=2, scale=6.0)
  nets = coding.fixed_point_nets(model, variables)
  dev = fxdevice.prepare(nets)
  z = np.random.default_rng(0).integers(-30, 31, (1, 2, 3, N)).astype(np.int32)
  if dev is not None:
    _, ok = jax.jit(lambda a, z: fxdevice.hyper(fxdevice.static(dev), a, z, 2, 3))(
        fxdevice.device_arrays(dev), z)
    assert not bool(ok)
  tables = T.update(model, variables)
  x = np.random.default_rng(1).random((1, 70, 90, 3)).astype(np.float32)
  host = coding.HOST_H_S["calls"]
  strings, shapes = coding.compress(model, variables, tables, x)
  assert strings == _old_strings(model, variables, tables, x)
  np.testing.assert_array_equal(coding.decompress(model, variables, tables, strings, shapes,
                                                  70, 90),
                                _old_decode(model, variables, tables, strings, 70, 90))
  assert coding.HOST_H_S["calls"] == host + 2  # the encoder and the decoder


def test_polyphase_conv_transpose_is_flax_conv_transpose():
  import flax.linen as nn
  rng = np.random.default_rng(0)
  for k, s, pad in [(5, 2, (2, 3)), (3, 2, (1, 2)), (5, 3, (2, 4)), (4, 2, (1, 2))]:
    x = jnp.asarray(rng.normal(size=(2, 7, 9, 4)).astype(np.float32))
    ref = nn.ConvTranspose(6, (k, k), (s, s), padding=(pad, pad))
    ours = PolyphaseConvTranspose(6, (k, k), (s, s), padding=(pad, pad))
    v = ref.init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(np.shape, v)
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=0, atol=2e-6)
    # the (4, 2, (1, 2)) layer does not fit the polyphase form: flax's own code runs
    assert (ours._polyphase() is None) == (k == 4)


_CROSS = r"""
import hashlib, sys, numpy as np
sys.path.insert(0, {root!r})
from tests.compression.test_compress_buckets import _variables
from jaxvision.compression import coding, tables as T
for name in ("bmshj2018-hyperprior", "mbt2018-mean"):
  model, v = _variables(name, seed=4, n=16, m=24)
  tabs = T.update(model, v)
  for h, w in ((150, 90), (64, 530)):
    x = np.random.default_rng(h).random((1, h, w, 3)).astype(np.float32)
    s, shapes = coding.compress(model, v, tabs, x)
    data = {data!r}
    if data:
      s = [bytes.fromhex(p) for p in data[(name, h, w)].split(",")]
    px = (coding.decompress(model, v, tabs, s, shapes, h, w) * 255 + 0.5).astype(np.uint8)
    print(name, h, w, ",".join(p.hex() for p in s) if not data else "", hashlib.sha256(px).hexdigest(),
          hashlib.sha256(b"".join(coding.compress(model, v, tabs, x)[0])).hexdigest())
"""


@pytest.mark.slow
@pytest.mark.longrun
def test_files_and_pixels_identical_across_xla_flags(tmp_path):
  """Encode with the default XLA flags; decode (and encode again) with oneDNN and with 8
  host devices: the same files, the same pixels."""
  def run(flags, data=None):
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
           "JAXVISION_COMPILE_CACHE": str(tmp_path / f"cache{len(flags)}")}
    p = subprocess.run([sys.executable, "-c", _CROSS.format(root=ROOT, data=data)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return [l.split() for l in p.stdout.strip().splitlines()]

  base = run("")
  data = {(r[0], int(r[1]), int(r[2])): r[3] for r in base}
  for flags in ("--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
                "--xla_force_host_platform_device_count=8"):
    other = run(flags, data)
    assert [(r[:3], r[-2], r[-1]) for r in other] == [(r[:3], r[-2], r[-1]) for r in base], flags


def test_executable_files_load_and_refuse_foreign_globals(tmp_path):
  """core/executables.py's files: a stored executable loads and runs; a record naming any other
  global than the JAX classes an executable needs is refused (compiled again), unrun."""
  import pickle
  from jaxvision.core import executables as programs
  f = jax.jit(lambda x, n: x * 2 + n)
  x = np.arange(3, dtype=np.float32)
  path = str(tmp_path / "exe")
  programs._store(path, f.lower(x, np.int32(1)).compile())
  loaded = programs._load(path)
  np.testing.assert_array_equal(np.asarray(loaded(x, np.int32(1))), x * 2 + 1)

  marker = tmp_path / "ran"

  class Evil:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  trees = [jax.tree.structure((1,)).serialize_using_proto(),
           jax.tree.structure(1).serialize_using_proto()]
  parts = [pickle.dumps(Evil())] + trees
  (tmp_path / "evil").write_bytes(
      programs._MAGIC + b"".join(len(p).to_bytes(8, "little") + p for p in parts))
  assert programs._load(str(tmp_path / "evil")) is None and not marker.exists()
  (tmp_path / "short").write_bytes(open(path, "rb").read()[:100])
  assert programs._load(str(tmp_path / "short")) is None


def test_device_lanes_give_whole_buckets_about_equal_pixels():
  sizes = [(h, w) for h, w, _ in SIZES] + [(h, w) for h, w, _ in MORE]
  lanes = coding.device_lanes(sizes, 2)
  assert set(lanes) == {coding.bucket_for(h, w) for h, w in sizes} and set(lanes.values()) == {0, 1}
  load = [0, 0]
  for h, w in sizes:
    b = coding.bucket_for(h, w)
    load[lanes[b]] += b[0] * b[1]
  biggest = max(sum(b[0] * b[1] for s in sizes if coding.bucket_for(*s) == b) for b in lanes)
  assert abs(load[0] - load[1]) <= biggest  # greedy: within one bucket's share
  assert set(coding.device_lanes(sizes, 1).values()) == {0}


def test_two_devices_write_the_same_files_as_one(tmp_path):
  """A folder spread over two CPU devices (the CLI's one per core; each bucket's images on
  one device, the lanes at once) gives the very bytes and pixels of one device."""
  name = "bmshj2018-hyperprior"
  _, variables = _variables(name, seed=3, scale=0.5)
  work = str(tmp_path / "codec")
  weights.save_workdir(work, variables, task="compression", model_name=name,
                       model_kwargs={"quality": 3, "N": N, "M": M})
  src = str(tmp_path / "in")
  names = _folder(src, SIZES[:6], 2)
  out = {}
  for n in (1, 2):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    jvc, png = str(tmp_path / f"jvc{n}"), str(tmp_path / f"png{n}")
    for argv in (["compress", "--checkpoint", work, src, jvc],
                 ["decompress", "--checkpoint", work, jvc, png]):
      p = subprocess.run([sys.executable, "-m", "jaxvision.cli", *argv], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
      assert p.returncode == 0, p.stderr[-2000:]
    out[n] = ({f: open(os.path.join(jvc, f), "rb").read() for f in sorted(os.listdir(jvc))},
              {f: np.asarray(Image.open(os.path.join(png, f))) for f in sorted(os.listdir(png))})
  assert out[1][0] == out[2][0] and len(out[1][0]) == len(names)
  for f in out[1][1]:
    np.testing.assert_array_equal(out[1][1][f], out[2][1][f], err_msg=f)
