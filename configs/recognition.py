r"""Face-embedding training (FaceNet-style metric learning) with the generic trainer.

  python -m train --config configs/recognition.py:model=dlib_resnet,loss=semihard \
      --workdir runs/rec_semihard
  python -m train --config configs/recognition.py:loss=batch_hard --workdir runs/rec_bh
  python -m train --config configs/recognition.py:loss=softmax_center --workdir runs/rec_sc
  jaxvision embed-faces photos/ --json faces.json --checkpoint runs/rec_semihard

Models: dlib_resnet (the dlib metric ResNet's structure; the cpu preset narrows it),
deepid (39x39 chips here; the paper's patches are 39x31), deepface (152x152; the cpu preset
narrows its layers to 8 channels), facenet_inception_resnet_v1 (davidsandberg/facenet's,
160 px; the cpu preset: 80 px, 1/2/1 blocks, 128-D), openface_nn4_small2 (96 px);
every output L2-normalised. Losses: semihard (FaceNet, margin 0.2 on squared distances),
batch_hard, batch_hard_soft (Hermans et al. 2017), softmax_center (softmax + centre loss);
ohem_fraction < 1 keeps the hardest fraction of the triplets / anchors / examples.

Presets
  cpu   (default) a narrow dlib_resnet (16-64 channels, 64-D, 48x48 chips) on the
        lfw_subset SMOKE-TEST set (each of 80 LFW crops is its own identity, its images
        strong augmentations; 20 held-out crops are the eval pseudo-identities), P x K =
        8 x 4, Adam 1e-3, 200 steps. It shows that training runs and separates held-out
        pseudo-identities (eval/auc rises from the untrained net's); it is not a benchmark.
        Measured (semihard, 2-core CPU under load, 30 steps): see docs/recognition.md.
  paper the FaceNet recipe for a GPU on a folder of identities (set data.dataset to
        folder:/path/CASIA-WebFace-aligned or VGGFace2 chips): full dlib_resnet at 150 px,
        P x K = 45 x 40 (FaceNet's ~1800-image batches), margin 0.2, Adam 0.05 -> as in
        davidsandberg/facenet's triplet training (its best LFW models used softmax + centre
        loss instead: ANCHORS.md).

Every key can be overridden: --config.data.dataset=folder:/faces --config.margin=0.3;
the residual units (a list, which flags cannot set) with the argument widths=8-16d-32d
(channels per unit, "d" = the unit halves the resolution).
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps

MODELS = ("dlib_resnet", "deepid", "deepface", "facenet_inception_resnet_v1",
          "openface_nn4_small2")
# The chip side each model is trained on (cpu preset / paper).
SIZES = {"dlib_resnet": (48, 150), "deepid": (39, 39), "deepface": (152, 152),
         "facenet_inception_resnet_v1": (80, 160), "openface_nn4_small2": (96, 96)}
LOSSES = ("semihard", "batch_hard", "batch_hard_soft", "softmax_center")
CPU_KWARGS = {
    "dlib_resnet": {"units": [[16, False], [32, True], [64, True], [64, True]],
                    "stem_features": 16, "embed_dim": 64},
    "deepid": {},  # already small (0.15 M parameters)
    "deepface": {"widths": [8, 8, 8, 8, 8, 8], "embed_dim": 256},
    "facenet_inception_resnet_v1": {"repeats": [1, 2, 1], "embed_dim": 128},
    "openface_nn4_small2": {},  # 3.7 M parameters at 96 px: slow but feasible on a CPU
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, first="model", model="dlib_resnet", loss="semihard", preset="cpu",
                   widths="")
  name, loss, preset = opts["model"], opts["loss"], check_preset(opts["preset"])
  if name not in MODELS:
    raise ValueError(f"unknown recognition model {name!r}; choose from: {', '.join(MODELS)}")
  if loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}; choose from: {', '.join(LOSSES)}")
  c = ml_collections.ConfigDict()
  c.task = "face_embedding"
  kwargs = dict(CPU_KWARGS[name]) if preset == "cpu" else {}
  if opts["widths"]:  # e.g. widths=8-16d-32d: residual units of 8, 16 (down), 32 (down)
    try:
      kwargs["units"] = [[int(w.rstrip("d")), w.endswith("d")] for w in opts["widths"].split("-")]
    except ValueError:
      raise ValueError(f"widths {opts['widths']!r}: expected e.g. 8-16d-32d") from None
  kwargs["normalize"] = True
  kwargs["num_classes"] = 80 if loss == "softmax_center" else 0
  c.model = ml_collections.ConfigDict({"name": name, "kwargs": kwargs})
  c.loss = loss
  c.margin = 0.2
  c.center_weight = 0.01
  c.ohem_fraction = 1.0
  c.collapse_spread = 1e-3
  # Same person below this L2 distance of the normalised embeddings (embed-faces,
  # verify-faces with --checkpoint); FaceNet's squared-distance 1.1 is about 1.05 plain.
  c.threshold = 1.0
  c.data = ml_collections.ConfigDict(dict(
      dataset="lfw_subset",      # "lfw_subset" (smoke test) | "folder:/path" (identities)
      image_size=SIZES[name][0],
      identities_per_batch=8,    # P
      images_per_identity=4,     # K
      eval_views=2,
      eval_max_identities=0,     # 0: all held-out identities
      strong_augment=False,      # folder data: mild augmentation unless set
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=10,
      grad_clip_norm=1.0))
  set_steps(c, total_steps=200, batch_size=32, log_every=10, eval_every=50,
            checkpoint_every=100, keep_checkpoints=2, seed=0)
  if preset == "paper":
    c.data.dataset = "folder:/data/faces"
    c.data.image_size = SIZES[name][1]
    c.data.identities_per_batch = 45
    c.data.images_per_identity = 40
    c.batch_size = 45 * 40
    c.model.kwargs["num_classes"] = 10575 if loss == "softmax_center" else 0  # CASIA
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, schedule="step", boundaries=[100_000],
        decay_factor=0.1, warmup_steps=1000))
    c.total_steps = 200_000
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 5_000
  return c
