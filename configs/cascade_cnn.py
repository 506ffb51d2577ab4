r"""Cascade CNN (Li et al. 2015): six nets trained in order, each detection net on what the
earlier nets let through.

  python -m train --config configs/cascade_cnn.py:12net --workdir runs/12net
  python -m train --config configs/cascade_cnn.py:12cal,12net=runs/12net --workdir runs/12cal
  python -m train --config configs/cascade_cnn.py:24net,12net=runs/12net,12cal=runs/12cal \
      --workdir runs/24net
  ... 24cal, 48net, 48cal likewise (every earlier workdir as stage=DIR)
  jaxvision detect-faces photo.jpg --json faces.json --model cascade-cnn --checkpoint runs/48cal

Argument: the net (`12net`, `12cal`, `24net`, `24cal`, `48net`, `48cal`), then key=value:
the earlier nets' workdirs (`12net=DIR`, ...; all of them are required, in cascade order they
form data.previous_stages, which `detect-faces --checkpoint` reads), `data=DATASET` (default
`faces`), `preset=cpu|paper`.

Detection nets: binary face / non-face softmax on negatives (IoU < 0.3) and positives
(IoU > 0.65), mixed 3:1, no OHEM, no regression. Calibration nets: 45-way softmax over the
(scale x x-shift x y-shift) patterns, samples made by displacing each face with a random
pattern. Presets: cpu (default; a few hundred Adam steps on the embedded faces, about a
minute per net on 2 cores), paper (SGD, a GPU, a WIDER FACE / AFLW-sized dataset; the paper
reports 85.1% FDDB recall at 87% precision... from secondary notes).
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps

NETS = ("12net", "12cal", "24net", "24cal", "48net", "48cal")
THRESHOLDS = {"12net": 0.5, "24net": 0.5, "48net": 0.5}


def get_config(arg: str = "12net") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, first="net", net="12net", data="faces", preset="cpu",
                   **{n: "" for n in NETS})
  check_preset(opts["preset"])
  net = opts["net"]
  if net not in NETS:
    raise ValueError(f"unknown Cascade CNN net {net!r}; choose from: {', '.join(NETS)}")
  earlier = NETS[:NETS.index(net)]
  missing = [n for n in earlier if not opts[n]]
  if missing:
    raise ValueError(f"configs/cascade_cnn.py:{net} needs the earlier nets' workdirs: "
                     + ",".join(f"{n}=runs/{n}" for n in missing))
  calibration = net.endswith("cal")

  c = ml_collections.ConfigDict()
  c.task = "face_calibration" if calibration else "face_cascade"
  c.model = ml_collections.ConfigDict({"name": f"cascade-{net}", "kwargs": {}})
  c.loss_weights = ml_collections.ConfigDict({"det": 1.0, "box": 0.0, "landmark": 0.0})
  c.ohem_keep = 1.0
  c.data = ml_collections.ConfigDict(dict(
      dataset=opts["data"], data_dir="", annotations="", eval_annotations="",
      train_split="train",
      eval_split="test" if opts["data"] == "faces" else "validation",
      size=int(net[:2]),
      mix=(3, 1, 0, 0),           # negative : positive (part / landmark samples unused)
      negatives_per_image=50, windows_per_face=20, landmark_per_face=0, min_face=12.0,
      max_images=0, eval_max_images=0, eval_batches=4, eval_batch_size=64,
      threshold=THRESHOLDS.get(net, 0.5),
      previous_stages=tuple(opts[n] for n in earlier),
      previous_thresholds=tuple(THRESHOLDS.get(n, 0.5) for n in earlier),
      mine_min_size=20.0, mine_max_windows=20000, mine_max_proposals=200,
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=20, grad_clip_norm=5.0))
  set_steps(c, total_steps=400, batch_size=128, log_every=20,
            eval_every=200, checkpoint_every=200, keep_checkpoints=2, seed=0)
  if opts["preset"] == "paper":
    c.batch_size = 256
    c.optimizer = ml_collections.ConfigDict(dict(
        name="sgd", learning_rate=0.01, momentum=0.9, schedule="step", boundaries=(0.5, 0.8),
        decay_factor=0.1, weight_decay=5e-4, warmup_steps=0))
    c.total_steps = 100_000
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 5_000
  return c
