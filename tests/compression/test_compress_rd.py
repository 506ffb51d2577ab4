"""`jaxvision rd`: our codec (a real .jvc round trip per image) and Pillow codecs on
two tiny images; JSON, PNG and BD-rate entries."""
import json

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxvision import cli
from jaxvision.compression import coding, convert
from jaxvision.compression import tables as T
from jaxvision.compression import rd as jv_rd
from jaxvision.compression.layers import EntropyBottleneck
from jaxvision.core import weights
from jaxvision.core.registry import create_model
from tests.compression.reference import random_params

NAME, N, M = "bmshj2018-factorized", 8, 12


def _workdir(path, quality, seed):
  model = create_model(NAME, quality=quality, N=N, M=M)
  p = random_params(convert._param_shapes(model), seed)
  p["entropy_bottleneck"] = EntropyBottleneck(M).solve_quantiles(p["entropy_bottleneck"])
  variables = {"params": jax.tree.map(jnp.asarray, p)}
  weights.save_workdir(str(path), variables, task="compression", model_name=NAME,
                       model_kwargs={"quality": quality, "N": N, "M": M})
  return model, variables


def test_rd_command_two_tiny_images(tmp_path, capsys):
  rng = np.random.default_rng(0)
  files = []
  for i, (h, w) in enumerate([(40, 56), (33, 48)]):
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) % 256 + rng.integers(0, 20, (h, w, 3))
    files.append(str(tmp_path / f"im{i}.png"))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(files[-1])
  model, variables = _workdir(tmp_path / "q3", 3, 0)
  out = tmp_path / "rd"
  argv = ["rd", *files, "--checkpoint", str(tmp_path / "q3"), "--codecs", "jpeg,webp",
          "--qualities", "jpeg=10:30:50:70:90", "--qualities", "webp=10:50:90", "--out",
          str(out)]
  assert cli.main(argv) == 0, capsys.readouterr().err
  res = json.loads((out / "rd.json").read_text())
  assert (out / "rd.png").stat().st_size > 1000
  assert [im["name"] for im in res["images"]] == ["im0.png", "im1.png"]
  jpeg = res["curves"]["jpeg"]
  assert [p["quality"] for p in jpeg["points"]] == [10, 30, 50, 70, 90]
  assert len(res["curves"]["webp"]["points"]) == 3
  ours = res["extra"]["jaxvision " + NAME]
  per = res["extra_per_image"]["jaxvision " + NAME]
  assert len(ours) == 1 and set(per) == {"im0.png", "im1.png"}
  # The averaged point is the mean of the per-image points, and each per-image point
  # is the real file: 8 * bytes / pixels, PSNR of the decoded uint8 image.
  for k in ("bpp", "psnr"):
    assert np.isclose(ours[0][k], np.mean([per[n][0][k] for n in per]))
  img = np.asarray(Image.open(files[1]))
  x = img[None].astype(np.float32) / 255
  strings, _ = coding.compress(model, variables, T.update(model, variables), x)
  dec = (coding.reconstruct(model, variables, x)[0] * 255 + 0.5).astype(np.uint8)
  mse = np.mean((dec.astype(np.float64) - img) ** 2)
  assert np.isclose(per["im1.png"][0]["psnr"], 10 * np.log10(255 ** 2 / mse), atol=1e-3)
  assert per["im1.png"][0]["bytes"] > sum(map(len, strings))  # + header and CRC
  assert per["im1.png"][0]["ms_ssim"] is None  # too small for MS-SSIM: null, not made up
  # BD-rates: webp vs jpeg has too few points (3) -> null with the reason; jpeg vs the
  # CompressAI Kodak curves is computed where the PSNR ranges overlap, or explained.
  assert res["bd"]["webp"]["jpeg"]["bd_rate_percent"] is None
  assert "need >= 4" in res["bd"]["webp"]["jpeg"]["error"]
  assert set(res["bd"]["jpeg"]) == {f"compressai-kodak/{k}" for k in jv_rd.COMPRESSAI_KODAK}
  printed = capsys.readouterr().out
  assert "jpeg: " in printed and f"jaxvision {NAME}: " in printed
  # one checkpoint = one point: its BD-rates are null, with the reason
  assert res["bd"]["jaxvision " + NAME]["jpeg"]["bd_rate_percent"] is None
  # Errors: one line, exit 1.
  assert cli.main(["rd", "--out", str(out)]) == 1
  assert cli.main(["rd", files[0], "--codecs", "gif", "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and all(e.startswith("jaxvision rd: error: ") for e in err)
