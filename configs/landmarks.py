r"""Facial landmarks: PFLD (Guo et al. 2019) trained by the generic trainer.

  python -m train --config configs/landmarks.py --workdir runs/pfld
  python -m train --config configs/landmarks.py:model=pfld,width=0.25,data=folder:/data/300w \
      --workdir runs/pfld025
  python -m train --config configs/landmarks.py:loss=wing --workdir runs/pfld_wing

Arguments (key=value): `model` (pfld), `width` (1.0 = PFLD 1X, 0.25 = 0.25X), `size` (input
crop side, 112), `loss` (pfld | wing | l2), `data` (`embedded`, or `folder:/path` of images
with iBUG .pts files), `preset` (cpu | paper).

Data: `embedded` is 81 training faces (scikit-image's astronaut and LFW crops) whose
68-point labels are dlib's shape predictor's output (a teacher: this trains a student to
imitate dlib, not to match human annotations); 20 LFW crops are the test split.

Presets
  cpu   (default) 300 Adam steps of batch 16 at width 0.25 (minutes on 2 CPU cores).
        Measured on the embedded faces (seed 0): test NME (inter-ocular, against the
        teacher's points on the 20 held-out LFW crops) 0.165 at step 100, 0.143 at 200,
        0.139 at 300; the training batches' NME 0.085 at 300 (81 faces: a smoke test of
        the recipe, not a landmark model to use).
  paper PFLD's recipe for 300-W / WFLW on a GPU as recalled (check the paper before
        relying on it): width 1.0, batch 256, Adam lr 1e-4, weight decay 1e-6 (as adamw),
        ~12k steps (about 64 epochs of 300-W's 3,148 training faces with 16 augmented
        copies each). Paper (300-W, inter-ocular NME %, common /
        full set; recalled, not checked here): 1X 3.32 / 3.76, 0.25X 3.38 / 4.02.
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, first="model", model="pfld", width="", size="112", loss="pfld",
                   data="embedded", preset="cpu")
  preset = check_preset(opts["preset"])
  if opts["model"] != "pfld":
    raise ValueError(f"configs/landmarks.py trains pfld; got model={opts['model']}")
  if opts["loss"] not in ("pfld", "wing", "l2"):
    raise ValueError(f"loss={opts['loss']}: choose pfld, wing or l2")
  width = float(opts["width"] or (1.0 if preset == "paper" else 0.25))
  c = ml_collections.ConfigDict()
  c.task = "landmarks"
  c.model = ml_collections.ConfigDict({"name": "pfld", "kwargs": {
      "num_points": 68, "width": width, "input_size": int(opts["size"])}})
  c.loss = opts["loss"]
  c.loss_floor = 1.0        # PFLD's weight is floor + sum(1 - cos); the paper's floor is 0
  c.wing_w, c.wing_eps = 10.0, 2.0
  c.data = ml_collections.ConfigDict(dict(
      dataset=opts["data"], data_dir="", eval_folder="", crop_scale=1.25, eval_batch_size=20))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=20, grad_clip_norm=5.0))
  set_steps(c, total_steps=300, batch_size=16, log_every=20, eval_every=100,
            checkpoint_every=100, keep_checkpoints=2, seed=0)
  if preset == "paper":
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, weight_decay=1e-6, schedule="cosine",
        warmup_steps=0))
    c.batch_size = 256
    c.total_steps = 12_000
    c.log_every, c.eval_every, c.checkpoint_every = 100, 1000, 1000
  return c
