r"""Denoisers (DnCNN, the Noise2Noise U-Net) trained with clean or noisy targets.

  python -m train --config configs/denoise.py:model=dncnn,noise=gaussian:25,target=noisy \
      --workdir runs/dncnn_n2n_g25
  python -m train --config configs/denoise.py:model=n2n_unet,noise=gaussian:0-50,target=noisy,preset=paper \
      --workdir runs/n2n_unet_g --config.data.dataset=folder:/data/imagenet_val

Arguments
  model   dncnn | n2n_unet
  noise   a noise model of jaxvision.denoise.noise: gaussian:25, gaussian:0-50, poisson:30,
          poisson_gaussian:30,10, bernoulli:0.5, impulse:0-0.95, text:0-0.5 (ranges: a level
          per image). Evaluation uses eval_noise (default: the noise, a range's midpoint).
  target  noisy (Noise2Noise: a second, independent draw is the target) | clean
  loss    default by noise as in Noise2Noise: l1 for text (median), l0 (annealed) for impulse,
          l2 otherwise
  preset  cpu | paper
Real noise: --config.data.dataset=pairs:/path/noisy,/path/clean (same file names; target
must be clean). Clean photos of your own: --config.data.dataset=folder:/path.

Presets
  cpu   (default) a small network (dncnn: 8 layers of 32 channels; n2n_unet: 24-channel
        encoder) on 48x48 (unet: 64x64) crops of the 19 embedded train photos, batch 8,
        200 Adam steps (1e-3, cosine); evaluated on 128x128 centre crops of the 3 held-out
        photos (camera, coffee, rocket) with the same noise drawn with a fixed key.
        Measured (this preset, dncnn, gaussian:25, 2-core CPU shared with other jobs):
        noisy input 20.81 dB PSNR / 0.307 SSIM; target=noisy (Noise2Noise) 26.11 dB /
        0.536; target=clean 26.62 dB / 0.565 after 200 steps (about 2.5 minutes each).
  paper the Noise2Noise recipe for a GPU: the full network (dncnn: 17 x 64; the U-Net of
        the paper's table 2), 256x256 crops (unet) / 64 (dncnn), batch 4 (unet) / 128, Adam
        3e-4 (unet, N2N) / 1e-3 (dncnn), 300k steps with cosine decay. Published: N2N on
        Kodak at sigma 25 (trained on sigma 0-50) 32.39 dB with noisy targets (32.50 clean);
        DnCNN-S on BSD68 sigma 25: 29.23 dB (grey).

Every key can be overridden: --config.total_steps=1000 --config.eval_noise=gaussian:50
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps

CPU_KWARGS = {"dncnn": {"depth": 8, "features": 32}, "n2n_unet": {"features": 24}}


def _eval_level(spec: str) -> str:
  """The noise at a range's midpoint (the fixed level evaluation reports)."""
  kind, _, rest = spec.partition(":")
  vals = []
  for part in rest.split(","):
    lo, _, hi = part.partition("-")
    vals.append(f"{(float(lo) + float(hi)) / 2:g}" if hi else lo)
  return f"{kind}:{','.join(vals)}"


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, first="model", model="dncnn", noise="gaussian:25", target="noisy",
                   loss="", preset="cpu")
  name, preset = opts["model"], check_preset(opts["preset"])
  if name not in CPU_KWARGS:
    raise ValueError(f"unknown denoising model {name!r}; choose from: {', '.join(CPU_KWARGS)}")
  if opts["target"] not in ("clean", "noisy"):
    raise ValueError(f"target must be clean or noisy, got {opts['target']!r}")
  from jaxvision.denoise import noise  # checks the spec with the library's own parser
  spec = noise.parse(opts["noise"])
  loss = opts["loss"] or {"text": "l1", "impulse": "l0"}.get(spec.kind, "l2")
  if loss not in ("l2", "l1", "l0"):
    raise ValueError(f"loss must be l2, l1 or l0, got {loss!r}")

  c = ml_collections.ConfigDict()
  c.task = "denoise"
  kwargs = dict(CPU_KWARGS[name]) if preset == "cpu" else {}
  c.model = ml_collections.ConfigDict({"name": name, "kwargs": {**kwargs, "dtype": "float32"}})
  c.noise = str(spec)
  c.eval_noise = _eval_level(c.noise)
  c.target = opts["target"]
  c.loss = loss
  c.data = ml_collections.ConfigDict(dict(
      dataset="photos",          # "photos" | "folder:/path" | "pairs:NOISY,CLEAN" | TFDS name
      data_dir="",
      train_split="train",
      eval_split="test",
      crop_size=64 if name == "n2n_unet" else 48,
      eval_crop=128,             # centre crops of the held-out photos; 0: whole images
      eval_max_images=0,
      worker_count=2,
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=10, grad_clip_norm=1.0))
  set_steps(c, total_steps=200, batch_size=8, log_every=10, eval_every=100,
            checkpoint_every=100, keep_checkpoints=2, seed=0)

  if preset == "paper":
    c.data.crop_size = 256 if name == "n2n_unet" else 64
    c.data.eval_crop = 0
    c.batch_size = 4 if name == "n2n_unet" else 128
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=3e-4 if name == "n2n_unet" else 1e-3, b2=0.99,
        schedule="cosine", warmup_steps=0, grad_clip_norm=0.0))
    c.total_steps = 300_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 5_000
  return c
