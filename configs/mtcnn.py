r"""MTCNN (Zhang et al. 2016): train P-Net, then R-Net, then O-Net, each on what the
previous stages let through.

  python -m train --config configs/mtcnn.py:pnet --workdir runs/pnet
  python -m train --config configs/mtcnn.py:rnet,pnet=runs/pnet --workdir runs/rnet
  python -m train --config configs/mtcnn.py:onet,pnet=runs/pnet,rnet=runs/rnet --workdir runs/onet
  jaxvision detect-faces photo.jpg --json faces.json --checkpoint runs/onet

Argument: the stage (`pnet` | `rnet` | `onet`), then key=value: `pnet=DIR`, `rnet=DIR` (the
earlier stages' workdirs, required for rnet / onet; stored in data.previous_stages in order,
which is where `detect-faces --checkpoint` finds the whole cascade), `data=DATASET`
(default `faces`, the embedded lfw_subset-in-photos set; or a TFDS wider_face-layout name, or
folder:/path with data.annotations), `preset=cpu|paper`.

Presets
  cpu   (default) on the embedded faces: P-Net 600 Adam steps of batch 140 (about a minute
        on 2 CPU cores; eval accuracy on held-out negatives+positives goes from ~0.5 to
        about 0.9), R-Net / O-Net 400 steps.
  paper the paper's recipe for a GPU on WIDER FACE (+ CelebA landmarks): batch 384
        (3:1:1:2), SGD momentum 0.9, lr 0.01 divided by 10 at 40% / 70% / 90% of the run,
        Paper results with the full cascade: WIDER FACE val AP 0.851 / 0.820 / 0.607.

Loss weights det/box/landmark 1/0.5/0.5 (P-Net, R-Net), 1/0.5/1 (O-Net); OHEM keeps the
hardest 70% of the classification losses. Every key can be overridden: --config.total_steps=...
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps

STAGES = {"pnet": (12, "mtcnn-pnet", 0.6), "rnet": (24, "mtcnn-rnet", 0.7),
          "onet": (48, "mtcnn-onet", 0.7)}


def get_config(arg: str = "pnet") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, first="stage", stage="pnet", data="faces", preset="cpu", pnet="", rnet="")
  check_preset(opts["preset"])
  stage = opts["stage"]
  if stage not in STAGES:
    raise ValueError(f"unknown MTCNN stage {stage!r}; choose from: pnet, rnet, onet")
  size, model, threshold = STAGES[stage]
  earlier = list(STAGES)[:list(STAGES).index(stage)]
  missing = [s for s in earlier if not opts[s]]
  if missing:
    raise ValueError(f"configs/mtcnn.py:{stage} trains on what {', '.join(earlier)} let "
                     f"through: give their workdirs, e.g. {stage},"
                     + ",".join(f"{s}=runs/{s}" for s in earlier))

  c = ml_collections.ConfigDict()
  c.task = "face_cascade"
  c.model = ml_collections.ConfigDict({"name": model, "kwargs": {}})
  c.loss_weights = ml_collections.ConfigDict(
      {"det": 1.0, "box": 0.5, "landmark": 1.0 if stage == "onet" else 0.5})
  c.ohem_keep = 0.7
  c.data = ml_collections.ConfigDict(dict(
      dataset=opts["data"],     # "faces" | TFDS wider_face-layout name | "folder:/path"
      data_dir="",
      annotations="",           # folder datasets: WIDER FACE-style annotation file (train)
      eval_annotations="",      # ... and for the eval split
      train_split="train",
      eval_split="test" if opts["data"] == "faces" else "validation",
      size=size,
      mix=(3, 1, 1, 2),         # negative : positive : part : landmark
      negatives_per_image=50,
      windows_per_face=20,
      landmark_per_face=10,
      min_face=12.0,
      max_images=0,             # 0: every image of the split
      eval_max_images=0,
      eval_batches=4,
      eval_batch_size=70,
      threshold=threshold,      # this stage's detection threshold (eval recall, later mining)
      previous_stages=tuple(opts[s] for s in earlier),
      previous_thresholds=tuple(STAGES[s][2] for s in earlier),
      mine_min_size=20.0,       # smallest window of the pyramid the earlier stages scan
      mine_max_windows=20000,   # per image, subsampled beyond
      mine_max_proposals=200,   # per image, of what the earlier stages let through
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=20, grad_clip_norm=5.0))
  set_steps(c, total_steps=600 if stage == "pnet" else 400, batch_size=140, log_every=20,
            eval_every=200, checkpoint_every=200, keep_checkpoints=2, seed=0)

  if opts["preset"] == "paper":
    c.batch_size = 384
    c.optimizer = ml_collections.ConfigDict(dict(
        name="sgd", learning_rate=0.01, momentum=0.9, schedule="step",
        boundaries=(0.4, 0.7, 0.9), decay_factor=0.1, weight_decay=5e-4, warmup_steps=0))
    c.total_steps = 200_000
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 5_000
    c.data.negatives_per_image = 50
    c.data.windows_per_face = 40
  return c
