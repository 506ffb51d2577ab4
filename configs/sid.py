r"""Learning to See in the Dark (Chen et al. 2018) on raw simulated from photos (Brooks et al. 2019).

  python -m train --config configs/sid.py --workdir runs/sid
  python -m train --config configs/sid.py:ratio=300 --workdir runs/sid_x300
  python -m train --config configs/sid.py:preset=paper --workdir runs/sid_paper \
      --config.data.dataset=folder:/data/photos

The `sid` task (jaxvision/denoise/task.py): every clean sRGB crop is unprocessed on the
device, inside the jitted step, into RGGB raw with a random camera (inverse tone curve,
gamma, colour matrix, white balance and brightening with the highlight mask: Brooks et al.,
jaxvision/denoise/raw.py), captured at 1/ratio of the exposure with shot and read noise on
the paper's log-linear relation, amplified by the ratio and clipped at 1, and packed into 4
half-resolution planes. `sid_unet` maps it to the full-resolution sRGB photo; the loss is
L1, as SID's. Evaluation: the same with a fixed key per held-out image; "input" is the
camera pipeline (bilinear demosaic, told the true white balance and colour matrix) applied
to the same noisy raw.

Arguments
  ratio   the amplification ratio (exposure ratio of the long to the short capture; SID:
          100, 250, 300). Default 100.
  preset  cpu | paper
Noise: config.min_shot_noise / max_shot_noise bound the shot-noise variance (per unit of
signal, on the [0, 1] raw scale) of the short capture; the read-noise variance follows
Brooks' line, log read = 2.18 log shot + 1.20 + N(0, 0.26^2). Brooks sample shot noise in
[1e-4, 0.012] for normal exposures; at ratio 100 the input variance is 100 shot x +
10^4 read, so the upper part of that range leaves an input noise std above 1: the default
range is [1e-4, 1e-3] (override with --config.max_shot_noise=0.012).

Presets
  cpu   (default) sid_unet at a quarter width (8-16-32-64-128 channels), 64x64 sRGB crops
        (32x32 packed) of the 19 embedded train photos, batch 8, 300 Adam steps (1e-3,
        cosine); evaluated on 128x128 centre crops of the 3 held-out photos (camera, coffee,
        rocket) with a fixed camera and noise draw per image.
        Measured (ratio 100; 7 min 40 s on the 2-core CPU shared with other jobs, load
        average about 10): the camera pipeline (true metadata, bilinear demosaic) on the
        noisy raw 13.76 dB PSNR / 0.121 SSIM; sid_unet 16.73 dB / 0.461 after 150 steps,
        17.00 dB / 0.465 after 300 (training L1 0.43 at step 10, 0.107 at step 300).
  paper SID's recipe for a GPU: the full network (32-512 channels), 512x512 crops (SID: 512
        packed patches, i.e. 1024 sRGB pixels), batch 1, Adam 1e-4 for 2000 epochs then
        1e-5 for 2000 more (here: 400k steps, the step decay at the half), whole held-out
        images. Published (SID's table 1, the Sony set, real raw): 28.88 dB / 0.787 SSIM.

Every key can be overridden: --config.total_steps=1000 --config.data.dataset=folder:/my/photos
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, first="preset", ratio="100", preset="cpu")
  preset = check_preset(opts["preset"])
  try:
    ratio = float(opts["ratio"])
  except ValueError:
    raise ValueError(f"ratio must be a number (e.g. 100), got {opts['ratio']!r}") from None
  if not ratio >= 1:
    raise ValueError(f"ratio must be >= 1 (the long exposure over the short), got {ratio:g}")

  c = ml_collections.ConfigDict()
  c.task = "sid"
  kwargs = {"features": 8} if preset == "cpu" else {}
  c.model = ml_collections.ConfigDict({"name": "sid_unet",
                                       "kwargs": {**kwargs, "dtype": "float32"}})
  c.ratio = ratio
  c.min_shot_noise = 1e-4
  c.max_shot_noise = 1e-3
  c.loss = "l1"
  c.data = ml_collections.ConfigDict(dict(
      dataset="photos",          # "photos" | "folder:/path" | any TFDS name (clean sRGB)
      data_dir="",
      train_split="train",
      eval_split="test",
      crop_size=64,              # sRGB pixels, even (32x32 packed: a multiple of 16)
      eval_crop=128,             # centre crops of the held-out photos; 0: whole images
      eval_max_images=0,
      worker_count=2,
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=10, grad_clip_norm=1.0))
  set_steps(c, total_steps=300, batch_size=8, log_every=10, eval_every=150,
            checkpoint_every=150, keep_checkpoints=2, seed=0)

  if preset == "paper":
    c.data.crop_size = 1024
    c.data.eval_crop = 0
    c.batch_size = 1
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-4, schedule="step", boundaries=[0.5],
        decay_factor=0.1, warmup_steps=0, grad_clip_norm=0.0))
    c.total_steps = 400_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 5_000
  return c
