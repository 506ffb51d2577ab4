r"""Learned image compression: λ·255²·MSE + bpp (Ballé et al. 2017/2018, Minnen et al. 2018).

  python -m train --config configs/compress.py:model=bmshj2018-hyperprior,quality=3 --workdir runs/hyper_q3
  python -m train --config configs/compress.py:model=mbt2018-mean,quality=5,preset=paper --workdir runs/mbt_q5
  python -m train --config configs/compress.py:model=mbt2018,quality=3,distortion=ms-ssim --workdir runs/ctx_msssim

Models: bmshj2018-factorized, bmshj2018-hyperprior, mbt2018-mean, mbt2018 (quality 1-8
picks (N, M) and λ of the CompressAI zoo). distortion=mse (default): loss
λ·255²·MSE + bpp; distortion=ms-ssim: λ·(1 - MS-SSIM) + bpp with the zoo's MS-SSIM λ
(2.40 ... 220); MS-SSIM needs crops > 160 pixels, so the crops become at least 192. Data: the embedded photos by default; any
TFDS image dataset or `folder:/path` through --config.data.dataset.

Presets
  cpu   (default) 128x128 crops, batch 4, 300 Adam steps at 1e-4: a smoke run (a few
        minutes on 2 cores). It lowers the rate from the untrained model's but is far
        from the zoo's curves.
  paper CompressAI's recipe for a GPU: 256x256 crops, batch 16, Adam 1e-4 (lr halved
        at 80% of the run), gradient clipping 1.0, 1M steps. Expected on Kodak at
        quality 3 (ANCHORS, CompressAI zoo): factorized 0.288 bpp / 29.62 dB,
        hyperprior 0.320 / 30.97, mean-scale 0.307 / 31.13.

The integer CDF tables are built from the trained parameters by
`jaxvision.compression.tables.update` (deterministic; float64 host arithmetic).
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps

LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483,
           7: 0.0932, 8: 0.1800}
MS_SSIM_LAMBDAS = {1: 2.40, 2: 4.58, 3: 8.73, 4: 16.64, 5: 31.73, 6: 60.50, 7: 115.37,
                   8: 220.00}


def get_config(arg: str = "model=bmshj2018-hyperprior,quality=3") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, model="bmshj2018-hyperprior", quality="3", preset="cpu",
                   distortion="mse")
  check_preset(opts["preset"])
  q = int(opts["quality"])
  if q not in LAMBDAS:
    raise ValueError(f"quality must be 1..8, got {q}")
  if opts["distortion"] not in ("mse", "ms-ssim"):
    raise ValueError(f"distortion must be mse or ms-ssim, got {opts['distortion']!r}")

  c = ml_collections.ConfigDict()
  c.task = "compression"
  # N, M = 0: the zoo's channel counts for this quality.
  c.model = ml_collections.ConfigDict(
      {"name": opts["model"], "kwargs": {"quality": q, "N": 0, "M": 0}})
  c.distortion = opts["distortion"]
  c.lmbda = (LAMBDAS if c.distortion == "mse" else MS_SSIM_LAMBDAS)[q]
  c.data = ml_collections.ConfigDict(dict(
      dataset="photos", data_dir="", train_split="train", eval_split="test",
      operator="", operator_params={}, max_side=0, crop_size=128, eval_crop=256,
      eval_max_images=0, worker_count=2))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-4, schedule="constant", warmup_steps=0,
      grad_clip_norm=1.0))
  set_steps(c, total_steps=300, batch_size=4, log_every=10,
            eval_every=100, checkpoint_every=100, keep_checkpoints=3, seed=0)
  if opts["preset"] == "paper":
    c.data.crop_size = 256
    c.batch_size = 16
    c.total_steps = 1_000_000
    c.optimizer.schedule = "step"
    c.optimizer.boundaries = [0.8]
    c.optimizer.decay_factor = 0.5
    c.log_every, c.eval_every, c.checkpoint_every = 100, 10_000, 5_000
  if c.distortion == "ms-ssim":  # 5 MS-SSIM scales of an 11-tap window need > 160 px
    c.data.crop_size = max(c.data.crop_size, 192)
  return c
