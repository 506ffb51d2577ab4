r"""HDRNet (Gharbi et al. 2017) trained to approximate an image operator, on CAN's task and data.

  python -m train --config configs/hdrnet.py:operator=tone_manipulation --workdir runs/hdrnet_tone
  python -m train --config configs/hdrnet.py:operator=dehaze,preset=paper --workdir runs/hdrnet_dehaze
  jaxvision enhance --checkpoint runs/hdrnet_tone --input photo.jpg --output out.png

The `image_to_image` task of configs/can.py with the model `hdrnet` (jaxvision/can/hdrnet.py):
the same operators (jaxvision operators), the same cached targets, the same evaluation, so
HDRNet and CAN compare on equal terms (docs/denoise.md, benchmarks/denoise.py).
`jaxvision enhance` runs an HDRNet workdir on the whole image at full resolution (the grid
is computed at low resolution; no tiles).

Presets
  cpu   (default) lowres 128 with 3 splat layers (a 16x16x8 grid, as the paper's), 128x128
        crops of the embedded photos (long side 512), batch 4, 300 Adam steps at 1e-3.
        Evaluated as CAN's cpu preset: 256x256 centre crops of the 3 held-out photos.
        Measured (tone_manipulation, shared 2-core CPU, about 5 minutes): identity
        28.85 dB -> 31.40 dB PSNR, 0.968 SSIM; CAN24 with configs/can.py on the same
        machine and data 32.29 dB. At 1080p HDRNet ran 7.1x faster per megapixel than
        CAN24 (docs/denoise.md).
  paper the paper's recipe for a GPU: lowres 256, 4 splat layers, 16x16x8 grid, Adam 1e-4,
        whole images up to 512 crops, 200k steps. Published: 28.8 dB on HDR+ and 1080p at
        50 Hz on a phone.

Every key can be overridden: --config.total_steps=1000 --config.data.dataset=folder:/my/photos
"""
import ml_collections

from configs import can as can_config
from configs.common import check_preset, parse_arg


def get_config(arg: str = "tone_manipulation") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, first="operator", operator="tone_manipulation", preset="cpu")
  preset = check_preset(opts["preset"])
  c = can_config.get_config(f"operator={opts['operator']},preset={preset}")
  c.model = ml_collections.ConfigDict({"name": "hdrnet", "kwargs": {
      "lowres": 128, "n_splat": 3, "grid_depth": 8, "width": 8, "features": 64,
      "dtype": "float32"}})
  if preset == "paper":
    c.model.kwargs.lowres = 256
    c.model.kwargs.n_splat = 4
  return c
