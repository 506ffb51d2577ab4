"""configs/compress.py: model/quality/distortion arguments pick the zoo's λ."""
import importlib.util

import pytest

from jaxvision.compression import models as CM


def _config(arg):
  spec = importlib.util.spec_from_file_location("compress_cfg", "configs/compress.py")
  m = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(m)
  return m.get_config(arg)


def test_mse_and_ms_ssim_lambdas():
  for q in range(1, 9):
    c = _config(f"model=mbt2018,quality={q}")
    assert c.lmbda == CM.LAMBDAS[q] and c.distortion == "mse" and c.model.name == "mbt2018"
    c = _config(f"model=mbt2018-mean,quality={q},distortion=ms-ssim")
    assert c.lmbda == CM.MS_SSIM_LAMBDAS[q] and c.distortion == "ms-ssim"
    assert c.data.crop_size > 160  # MS-SSIM's 5 scales need it
  assert CM.MS_SSIM_LAMBDAS[1] == 2.40 and CM.MS_SSIM_LAMBDAS[8] == 220.0
  with pytest.raises(ValueError, match="distortion"):
    _config("distortion=ssim")
  with pytest.raises(ValueError, match="quality"):
    _config("quality=9")
