r"""Single-image super-resolution (ESPCN, EDSR, WDSR, RCAN, Johnson et al.) on bicubic pairs.

  python -m train --config configs/sr.py:model=espcn,scale=2 --workdir runs/sr_espcn_x2
  python -m train --config configs/sr.py:model=edsr_baseline,scale=4,preset=paper \
      --workdir runs/edsr_baseline_x4 --config.data.dataset=div2k/bicubic_x4

Models: espcn, edsr_baseline, edsr, wdsr_a, wdsr_b, rcan (scale 2, 3, 4), johnson_sr
(scale 4, 8; trained with the VGG relu2_2 content loss). Low-resolution inputs are made on
the fly by MATLAB-style bicubic downscaling of random HR crops (docs/superres.md).

Presets
  cpu   (default) a narrow, shallow version of the model on the embedded photos, LR patches
        of 24 pixels, batch 8, 300 Adam steps: about 2-3 minutes on a 2-core CPU. Evaluated
        on 192x192 HR centre crops of the 3 held-out photos, Y channel, `scale` pixels shaved.
        Measured (espcn x2, residual variant, lr 3e-4, no warm-up, 96x96 eval crops, quiet
        2-core CPU): bicubic 32.01 dB PSNR-Y; model 32.16-32.26 after 40 steps (seeds 0-2,
        16-18 s), 33.10 after 300 steps (41 s; lr 1e-3: 31.93 at 40, 33.08 at 300).
        johnson_sr uses a random-weight VGG unless
        --config.descriptor.weights=vgg16-397923af.pth is given (a warning says so).
  paper the published recipe for a GPU: full-size model, LR patches of 48 (Johnson: 72),
        batch 16, Adam 1e-4 halved at 200k of 300k steps, L1 (ESPCN: MSE; WDSR: lr 1e-3);
        set data.dataset to div2k/bicubic_x<s> (TFDS, prepared as array_record) or
        folder:/path/DIV2K_train_HR. Published numbers: shared/ANCHORS.md, docs/superres.md.

Every key can be overridden: --config.total_steps=1000 --config.data.dataset=folder:/my/photos
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps

# Small widths/depths for the cpu preset (full sizes are each factory's defaults).
CPU_KWARGS = {
    "espcn": {"features": (64, 32), "residual": True, "channels": "y"},  # residual: see
    # jaxvision/superres/models.py; channels="y": the paper's (the net on Y, Cb/Cr bicubic)
    "edsr_baseline": {"n_resblocks": 4, "n_feats": 32},
    "edsr": {"n_resblocks": 4, "n_feats": 48, "res_scale": 0.1},
    "wdsr_a": {"n_resblocks": 4, "n_feats": 16},
    "wdsr_b": {"n_resblocks": 4, "n_feats": 24},
    "rcan": {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 32, "reduction": 8},
    "johnson_sr": {"features": 32, "n_resblocks": 2},
}
LOSSES = {"espcn": "mse", "johnson_sr": "perceptual"}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, model="espcn", scale="", preset="cpu")
  name, preset = opts["model"], opts["preset"]
  if name not in CPU_KWARGS:
    raise ValueError(f"unknown SR model {name!r}; choose from: {', '.join(CPU_KWARGS)}")
  scale = int(opts["scale"]) if opts["scale"] else (4 if name == "johnson_sr" else 2)
  allowed = (4, 8) if name == "johnson_sr" else (2, 3, 4)
  if scale not in allowed:
    raise ValueError(f"{name}: scale must be one of {', '.join(map(str, allowed))}, got {scale}")
  check_preset(preset)

  c = ml_collections.ConfigDict()
  c.task = "super_resolution"
  kwargs = dict(CPU_KWARGS[name]) if preset == "cpu" else {}
  if name == "espcn":  # as in the paper, for both presets (older workdirs hold "rgb")
    kwargs.setdefault("channels", "y")
  c.model = ml_collections.ConfigDict({"name": name, "kwargs": {"scale": scale, **kwargs,
                                                                "dtype": "float32"}})
  c.loss = LOSSES.get(name, "l1")
  c.data = ml_collections.ConfigDict(dict(
      dataset="photos",          # "photos" | "folder:/path" | any array_record TFDS name
      data_dir="",               # empty: $TFDS_DATA_DIR or ~/tensorflow_datasets
      train_split="train",
      eval_split="test",
      patch_size=24,             # LR patch; HR crops are scale * patch_size
      eval_crop=192,             # HR centre crops (divisible by 2, 3, 4, 8); 0: whole images
      eval_max_images=0,         # 0: all
      quantize_lr=True,          # round LR to 8 bits, like saved LR files
      worker_count=2,
  ))
  c.descriptor = ml_collections.ConfigDict(dict(arch="vgg16", weights="", width=1.0))
  c.perceptual = ml_collections.ConfigDict(dict(
      content_layer="relu2_2", content_weight=1.0, tv_weight=1e-5, pixel_weight=0.0))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=20,
      grad_clip_norm=1.0))
  set_steps(c, total_steps=300, batch_size=8, log_every=10,
            eval_every=100, checkpoint_every=100, keep_checkpoints=3, seed=0)
  if name == "espcn":  # residual, zero-initialised last conv: 1e-3 overshoots bicubic early
    c.optimizer.learning_rate = 3e-4
  if name == "johnson_sr":  # a width-1/4 random VGG keeps the cpu preset in minutes
    c.descriptor.width = 0.25
    c.data.patch_size = 16

  if preset == "paper":
    c.descriptor.width = 1.0
    c.data.dataset = f"div2k/bicubic_x{scale}" if scale in (2, 3, 4) else "div2k/bicubic_x4"
    c.data.eval_split = "validation"
    c.data.patch_size = 72 if name == "johnson_sr" else 48
    c.data.eval_crop = 0
    c.data.eval_max_images = 10
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3 if name.startswith("wdsr") else 1e-4,
        schedule="step", boundaries=[200_000], decay_factor=0.5, warmup_steps=0))
    c.batch_size = 4 if name == "johnson_sr" else 16
    c.total_steps = 200_000 if name == "johnson_sr" else 300_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 5_000
  return c
