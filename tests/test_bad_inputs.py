"""Bad input against every command (issue 13): non-zero exit, no traceback, one clear line
naming the thing at fault, and no output left behind.

The matrix: inputs that are missing, a folder with no image, empty, text, truncated, a
decompression-bomb header; checkpoints that are missing, empty, with a damaged config.json,
or of another family; outputs that are a folder or cannot be created; numeric flags that are
zero, negative or NaN. Each command gets a tiny valid workdir (random weights), so that only
the one bad thing differs from a good run.
"""
from __future__ import annotations

import os
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision import cli


def _png_header_only(path, w, h):
  """A valid PNG signature and IHDR declaring w x h, with a tiny IDAT: a bomb's header."""
  def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Good inputs, bad inputs and tiny workdirs of every family."""
  from jaxvision import families
  from jaxvision.core import weights
  from jaxvision.core.registry import create_model
  families.load("models")
  d = tmp_path_factory.mktemp("bad")
  e = {"dir": d}
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(d / "good.png")
  e["good"] = str(d / "good.png")
  data = open(e["good"], "rb").read()
  (d / "truncated.png").write_bytes(data[:len(data) // 2])
  (d / "empty.png").write_bytes(b"")
  (d / "text.png").write_text("not an image\n")
  _png_header_only(d / "bomb.png", 100000, 100000)
  (d / "noimages").mkdir()
  (d / "noimages" / "notes.txt").write_text("x")
  (d / "emptywd").mkdir()
  e["inputs"] = {k: str(d / f) for k, f in (
      ("missing", "missing.png"), ("no images", "noimages"), ("empty", "empty.png"),
      ("text", "text.png"), ("truncated", "truncated.png"), ("bomb", "bomb.png"))}

  def save(name, model_name, kwargs, task, shape, extra=None):
    m = create_model(model_name, **kwargs)
    shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros(shape)))
    v = jax.tree_util.tree_map_with_path(  # running variances positive: finite outputs
        lambda p, s: ((np.abs if "var" in jax.tree_util.keystr(p) else np.asarray)(
            0.05 * rng.standard_normal(s.shape)) + ("var" in jax.tree_util.keystr(p))
        ).astype(s.dtype), shapes)
    wd = str(d / name)
    weights.save_workdir(wd, v, task=task, model_name=model_name, model_kwargs=kwargs,
                         extra_config=extra or {})
    return wd

  specs = {
      "can": ("can", {"width": 4, "depth": 3}, "image_to_image", (1, 16, 16, 3)),
      "sr": ("espcn", {"scale": 2, "features": (8, 4)}, "super_resolution", (1, 8, 8, 3)),
      "style": ("johnson", {"width": 4, "num_residual": 1}, "style_transfer", (1, 16, 16, 3),
                {"style": {"image": "random"}}),
      "cls": ("resnet18", {"num_classes": 3, "width": 8, "layers": (1, 1, 1, 1)},
              "classification", (1, 32, 32, 3), {"data": {"image_size": 32}}),
  }
  e["wd"] = {k: save(k, *spec) for k, spec in specs.items()}
  e["wd"]["codec"] = _codec_workdir(str(d / "codec"), rng)
  e["jvc"] = _bad_jvc_files(d, e["wd"]["codec"], e["good"])
  damaged = d / "damaged"
  damaged.mkdir()
  for f in os.listdir(e["wd"]["can"]):
    src = os.path.join(e["wd"]["can"], f)
    if os.path.isfile(src):
      (damaged / f).write_bytes(open(src, "rb").read())
  (damaged / "config.json").write_text('{"model": {"name": "can", ')  # cut short
  e["bad_wd"] = {"missing": str(d / "nowd"), "empty": str(d / "emptywd"),
                 "damaged config": str(damaged)}
  for name in ("can", "sr", "style", "cls", "codec"):  # this family's config, another's weights
    mixed = d / f"mixed_{name}"
    mixed.mkdir()
    other = e["wd"]["sr" if name != "sr" else "can"]
    for item in os.listdir(other):
      src = os.path.join(other, item)
      if item != "config.json":
        os.symlink(src, mixed / item)
    (mixed / "config.json").write_text(open(os.path.join(e["wd"][name], "config.json")).read())
    e["bad_wd"][f"mismatched {name}"] = str(mixed)

  return e


def _codec_workdir(wd, rng):
  """A tiny factorized codec (random weights, solved quantiles) as a workdir."""
  from jaxvision.compression import convert
  from jaxvision.compression.layers import EntropyBottleneck
  from jaxvision.core import weights
  from jaxvision.core.registry import create_model
  kw = {"quality": 1, "N": 8, "M": 12}
  shapes = convert._param_shapes(create_model("bmshj2018-factorized", **kw))
  p = {m: {k: (0.2 * rng.standard_normal(shapes[m][k])).astype(np.float32) for k in shapes[m]}
       for m in shapes}
  p["entropy_bottleneck"] = EntropyBottleneck(12).solve_quantiles(p["entropy_bottleneck"])
  weights.save_workdir(wd, {"params": jax.tree.map(jnp.asarray, p)}, task="compression",
                       model_name="bmshj2018-factorized", model_kwargs=kw)
  return wd


def _bad_jvc_files(d, codec, good):
  """.jvc inputs for decompress: the same kinds as the images, and a CRC-correct file that
  declares 16384x16384 pixels with a few bytes of payload (a decompression bomb)."""
  from jaxvision.compression import files
  ok = str(d / "good.jvc")
  assert cli.main(["compress", "--checkpoint", codec, good, ok]) == 0
  data = open(ok, "rb").read()
  (d / "truncated.jvc").write_bytes(data[:len(data) // 2])
  (d / "empty.jvc").write_bytes(b"")
  (d / "text.jvc").write_text("not a jvc file\n")
  header, strings = files.read_jvc(ok)
  side = 16384
  header.height = header.width = side
  header.latent_shapes = [(1, side // 16, side // 16, header.latent_shapes[0][-1])]
  files.write_jvc(str(d / "bomb.jvc"), header, strings)
  (d / "nojvc").mkdir()
  (d / "nojvc" / "notes.txt").write_text("x")
  return {k: str(d / f) for k, f in (
      ("missing", "missing.jvc"), ("no images", "nojvc"), ("empty", "empty.jvc"),
      ("text", "text.jvc"), ("truncated", "truncated.jvc"), ("bomb", "bomb.jvc"))}


# command -> (argv builder (workdir, input, output) -> argv, its workdir key, output name,
#             a workdir of another family)
COMMANDS = {
    "enhance": (lambda wd, i, o: ["enhance", "--checkpoint", wd, "--input", i, "--output", o],
                "can", "out.png", "sr"),
    "upscale": (lambda wd, i, o: ["upscale", "--checkpoint", wd, i, o], "sr", "out.png", "can"),
    "stylize": (lambda wd, i, o: ["stylize", "--checkpoint", wd, i, o], "style", "out.png",
                "can"),
    "classify": (lambda wd, i, o: ["classify", "--checkpoint", wd, i], "cls", None, "can"),
    "detect-faces": (lambda wd, i, o: ["detect-faces", i, "--json", o, "--checkpoint", wd],
                     None, "out.json", "can"),
    "compress": (lambda wd, i, o: ["compress", "--checkpoint", wd, i, o], "codec", "out.jvc",
                 "can"),
    "decompress": (lambda wd, i, o: ["decompress", "--checkpoint", wd, i, o], "codec",
                   "out.png", "can"),
    "rd": (lambda wd, i, o: ["rd", i, "--checkpoint", wd, "--codecs", "jpeg", "--qualities",
                             "jpeg=50", "--out", o], "codec", "rd_out", "can"),
}


def _check(capsys, argv, out=None, name=None):
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse's own refusal (a flag of the wrong type): usage + a line
    code = e.code
  cap = capsys.readouterr()
  err = [l for l in cap.err.strip().splitlines() if l.strip()]
  if code == 2 and err and err[0].startswith("usage:"):
    err = [l for l in err if l.startswith("jaxvision ")]
  assert code != 0, (argv, cap.out, cap.err)
  assert "Traceback" not in cap.err, cap.err
  assert err and len(err) <= 2, err  # ours: one line (two: a folder's summary follows)
  assert err[0].startswith(f"jaxvision {argv[0]}: error:"), err
  if name:
    assert name in err[0], (name, err)
  if out:
    assert not os.path.exists(out), out
    left = [f for f in os.listdir(os.path.dirname(out)) if f.endswith(".tmp")]
    assert not left, left


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("bad", ["missing", "no images", "empty", "text", "truncated", "bomb"])
def test_bad_input_file(env, capsys, tmp_path, command, bad):
  argv, wd, out_name, _ = COMMANDS[command]
  out = str(tmp_path / out_name) if out_name else None
  workdir = env["wd"][wd] if wd else None
  given = (env["jvc"] if command == "decompress" else env["inputs"])[bad]
  args = argv(workdir, given, out)
  if workdir is None:  # detect-faces: the default MTCNN, no checkpoint
    args = args[:-2]
  _check(capsys, args, out, os.path.basename(given))


@pytest.mark.parametrize("command", [c for c in COMMANDS if COMMANDS[c][1]])
@pytest.mark.parametrize("bad", ["missing", "empty", "damaged config", "other family",
                                 "mismatched"])
def test_bad_checkpoint(env, capsys, tmp_path, command, bad):
  """... and "mismatched": the command's own config.json beside another model's checkpoint."""
  argv, key, out_name, other = COMMANDS[command]
  wd = (env["wd"][other] if bad == "other family" else
        env["bad_wd"][f"mismatched {key}"] if bad == "mismatched" else env["bad_wd"][bad])
  out = str(tmp_path / out_name) if out_name else None
  good = os.path.join(env["dir"], "good.jvc") if command == "decompress" else env["good"]
  _check(capsys, argv(wd, good, out), out, os.path.basename(wd))


@pytest.mark.parametrize("command", [c for c in COMMANDS if COMMANDS[c][2]])
@pytest.mark.parametrize("bad", ["folder", "cannot create"])
def test_bad_output(env, capsys, tmp_path, command, bad):
  argv, wd, out_name, _ = COMMANDS[command]
  blocker = tmp_path / "a_file"
  blocker.write_bytes(b"")
  if bad == "folder":  # (rd writes into a folder: for it, a file where the folder goes)
    out = tmp_path / out_name
    out.write_bytes(b"") if command == "rd" else out.mkdir()
  else:
    out = blocker / out_name  # under a file: no folder can be made there
  workdir = env["wd"][wd] if wd else env["wd"]["can"]
  good = os.path.join(env["dir"], "good.jvc") if command == "decompress" else env["good"]
  args = argv(workdir, good, str(out))
  if wd is None:
    args = args[:-2]
  _check(capsys, args, None, str(out))
  assert sorted(os.listdir(tmp_path)) == sorted(["a_file"] + ([out_name] if bad == "folder"
                                                              else []))


@pytest.mark.parametrize("argv", [
    ["enhance", "--tile", "0"], ["enhance", "--tile", "-5"], ["enhance", "--max-pixels", "0"],
    ["upscale", "--tile", "0"], ["upscale", "--max-pixels", "-1"],
    ["detect-faces", "--batch", "0"], ["detect-faces", "--batch", "-2"],
    ["enhance", "--max-pixels", "nan"], ["upscale", "--max-pixels", "nan"],
    ["detect-faces", "--batch", "nan"], ["rd", "--max-images", "-1"],
])
def test_bad_numbers(env, capsys, tmp_path, argv):
  command, flags = argv[0], argv[1:]
  build, wd, out_name, _ = COMMANDS[command]
  out = str(tmp_path / out_name)
  args = build(env["wd"][wd] if wd else None, env["good"], out)
  if wd is None:
    args = args[:-2]
  _check(capsys, args + flags, out, flags[0])


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_codec_memory_limit_is_one_line(env, capsys, tmp_path, monkeypatch, command):
  """A coding program whose buffers would not fit in the memory left is refused before it
  runs (XLA's memory analysis against MemAvailable, here a limit of 1 kB), one line."""
  monkeypatch.setenv("JAXVISION_MAX_MEMORY", "1e-6")
  argv, wd, out_name, _ = COMMANDS[command]
  out = str(tmp_path / out_name)
  good = os.path.join(env["dir"], "good.jvc") if command == "decompress" else env["good"]
  _check(capsys, argv(env["wd"][wd], good, out), out, os.path.basename(good))
  monkeypatch.setenv("JAXVISION_MAX_MEMORY", "64")  # within it: the same command works
  assert cli.main(argv(env["wd"][wd], good, out)) == 0 and os.path.exists(out)


@pytest.mark.parametrize("command", ["enhance", "upscale", "stylize"])
def test_nan_weights_are_one_line_and_write_nothing(env, capsys, tmp_path, monkeypatch, command):
  """A checkpoint whose weights are NaN (the trainer never saves one, but a damaged or
  foreign workdir can hold it: the loader is made to return NaN weights) gives one line
  naming the input, not an image of garbage that looks like a result."""
  from jaxvision.core import checkpoint
  load = checkpoint.load_variables

  def nan_variables(workdir):
    config, variables, step = load(workdir)
    return config, jax.tree.map(lambda a: np.full_like(a, np.nan), variables), step

  monkeypatch.setattr(checkpoint, "load_variables", nan_variables)
  argv, wd, out_name, _ = COMMANDS[command]
  out = str(tmp_path / out_name)
  _check(capsys, argv(env["wd"][wd], env["good"], out), out, "NaN")
