"""Tests of jaxvision.core.data: sources (embedded photos, folders, prepared TFDS), grain loader,
iterator checkpoints (get/set_state and orbax), eval batches and the operator target cache.

Every test writes only under pytest tmp dirs (passed as data_dir)."""
import functools
import io
import json
import os
import pickle
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision.core import data
from jaxvision.core.errors import DataError

GRID_N, GRID_H, GRID_W = 10, 40, 48


# ---------------------------------------------------------------------------------------------
# Fixtures and picklable helpers
# ---------------------------------------------------------------------------------------------

def grid_image(i: int, h: int = GRID_H, w: int = GRID_W) -> np.ndarray:
  """R = image id, G = 5*row, B = 5*col: every crop tells which image and which window."""
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([np.full((h, w), 20 * i + 10), 5 * y, 5 * x], -1).astype(np.uint8)


def ids_of(batch) -> list[int]:
  return [int(round((v * 255 - 10) / 20)) for v in batch["input"][:, 0, 0, 0]]


@pytest.fixture(scope="session")
def ddir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="session")
def grid_src(ddir, tmp_path_factory):
  folder = tmp_path_factory.mktemp("grid")
  for i in range(GRID_N):
    Image.fromarray(grid_image(i)).save(folder / f"img{i:02d}.png")
  return data.get_source(f"folder:{folder}", "train", ddir)


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("photos_data"))
  t = time.perf_counter()
  data.get_source("photos", "train", d)
  return d, time.perf_counter() - t


class HalfTarget:
  """pair_fn: target = input * 0.5 (picklable)."""

  def __call__(self, record):
    x = record["image"].astype(np.float32) / 255.0
    return {"input": x, "target": x * 0.5, "name": record["name"]}


CALLS = {"n": 0}


def box_blur(image, radius=1):
  """Stand-in slow operator: (2r+1)^2 box blur with edge padding; counts its calls."""
  CALLS["n"] += 1
  r = radius
  p = np.pad(image, ((r, r), (r, r), (0, 0)), mode="edge")
  out = np.zeros_like(image)
  for dy in range(2 * r + 1):
    for dx in range(2 * r + 1):
      out += p[dy:dy + image.shape[0], dx:dx + image.shape[1]]
  return out / (2 * r + 1) ** 2


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def batches_differ(a, b):
  return any(not np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


# ---------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------

def test_to_rgb_uint8_conversions():
  g16 = np.array([[0, 65535], [257 * 100, 128]], np.uint16)
  out = data.to_rgb_uint8(g16)
  assert out.shape == (2, 2, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], [[0, 255], [100, 0]])
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
  np.testing.assert_array_equal(data.to_rgb_uint8(np.array([[True, False]]))[0, :, 0], [255, 0])
  np.testing.assert_array_equal(data.to_rgb_uint8(np.array([[0.0, 1.0, 2.0, -1, 0.5]]))[0, :, 1],
                                [0, 255, 255, 0, 128])
  # RGBA on white: transparent -> white, opaque -> colour, half -> blend
  rgba = np.array([[[255, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], np.uint8)
  np.testing.assert_array_equal(data.to_rgb_uint8(rgba)[0],
                                [[255, 255, 255], [10, 20, 30], [127, 127, 127]])
  la = np.array([[[0, 0], [50, 255]]], np.uint8)
  np.testing.assert_array_equal(data.to_rgb_uint8(la)[0], [[255] * 3, [50] * 3])
  assert data.to_rgb_uint8(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4, 3)
  with pytest.raises(DataError):
    data.to_rgb_uint8(np.zeros((3, 4, 5), np.uint8))
  with pytest.raises(DataError):
    data.to_rgb_uint8(np.zeros((3, 4), np.int32))


def test_resize_max_side():
  img = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
  assert data.resize_max_side(img, None) is img
  assert data.resize_max_side(img, 300) is img
  small = data.resize_max_side(img, 150)
  assert small.shape == (150, 100, 3) and small.dtype == np.uint8
  flat = np.full((300, 200, 3), 77, np.uint8)
  assert (data.resize_max_side(flat, 64) == 77).all()  # antialiasing keeps flat areas exact


def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert data.resolve_data_dir(None) == str(tmp_path)
  assert data.resolve_data_dir("") == str(tmp_path)
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert data.resolve_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")
  assert data.resolve_data_dir(str(tmp_path / "x")) == str(tmp_path / "x")


# ---------------------------------------------------------------------------------------------
# Embedded photos
# ---------------------------------------------------------------------------------------------

def test_photos_dataset(photos_dir):
  d, prep_seconds = photos_dir
  train = data.get_source("photos", "train", d)
  test = data.get_source("photos", "test", d)
  names = [p.name for p in data.PHOTOS]
  assert len(train) + len(test) == len(data.PHOTOS) == 22
  assert [test[i]["name"] for i in range(len(test))] == list(data.PHOTOS_TEST)
  assert [train[i]["name"] for i in range(len(train))] == [
      n for n in names if n not in data.PHOTOS_TEST]
  by_name = {p.name: p for p in data.PHOTOS}
  for src in (train, test):
    for i in range(len(src)):
      r = src[i]
      img = r["image"]
      assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, r["name"]
      assert r["index"] == i and r["dataset_id"] == "jaxvision_photos/1.0.0"
      with Image.open(by_name[r["name"]].path()) as im:  # same size as the file in the wheel
        assert img.shape[:2] == (im.height, im.width), r["name"]
  cam = test[0]["image"]
  assert (cam[..., 0] == cam[..., 1]).all() and (cam[..., 0] == cam[..., 2]).all()  # grey -> RGB
  np.testing.assert_array_equal(cam, data.load_image_file(by_name["camera"].path()))
  np.testing.assert_array_equal(test[1]["image"], test[1]["image"])  # reading twice
  again = pickle.loads(pickle.dumps(test))
  np.testing.assert_array_equal(again[2]["image"], test[2]["image"])
  # preparing again reuses the prepared files
  info = os.path.join(d, "jaxvision_photos", "1.0.0", "dataset_info.json")
  mtime = os.stat(info).st_mtime_ns
  t = time.perf_counter()
  data.get_source("photos", "train", d)
  assert time.perf_counter() - t < min(1.0, prep_seconds)
  assert os.stat(info).st_mtime_ns == mtime
  with pytest.raises(DataError, match="unknown split 'validation'.*train, test"):
    data.get_source("photos", "validation", d)


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------

def _make_mixed_folder(folder):
  os.makedirs(folder, exist_ok=True)
  Image.fromarray(np.array([[0, 100], [200, 255]], np.uint8), "L").save(f"{folder}/grey.png")
  rgba = np.array([[[255, 0, 0, 0], [10, 20, 30, 255]]], np.uint8)
  Image.fromarray(rgba, "RGBA").save(f"{folder}/rgba.png")
  Image.fromarray(np.array([[0, 65535, 257 * 7]], np.uint16)).save(f"{folder}/grey16.png")
  pal = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
  pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
  pal.info["transparency"] = 2  # index 2 fully transparent -> white
  pal.save(f"{folder}/palette.png", transparency=2)
  Image.fromarray(np.full((16, 24, 3), (200, 30, 60), np.uint8)).save(f"{folder}/photo.jpg",
                                                                      quality=95)
  # EXIF orientation 6 (rotate 90 cw to display): stored 8x4 -> displayed 4x8
  im = Image.fromarray(np.zeros((4, 8, 3), np.uint8))
  exif = im.getexif()
  exif[0x0112] = 6
  im.save(f"{folder}/rot.jpg", exif=exif)
  Image.new("CMYK", (6, 5), (0, 0, 0, 255)).save(f"{folder}/cmyk.jpg")  # black
  with open(f"{folder}/notes.txt", "w") as f:  # not an image extension: ignored
    f.write("hello")


def test_folder_dataset(ddir, tmp_path):
  folder = tmp_path / "mixed"
  _make_mixed_folder(str(folder))
  src = data.get_source(f"folder:{folder}", "train", ddir)
  recs = {src[i]["name"]: src[i]["image"] for i in range(len(src))}
  assert sorted(recs) == ["cmyk.jpg", "grey.png", "grey16.png", "palette.png", "photo.jpg",
                          "rgba.png", "rot.jpg"]
  for name, img in recs.items():
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
  np.testing.assert_array_equal(recs["grey.png"][..., 0], [[0, 100], [200, 255]])
  assert (recs["grey.png"] == recs["grey.png"][..., :1]).all()
  np.testing.assert_array_equal(recs["grey16.png"][0, :, 0], [0, 255, 7])
  np.testing.assert_array_equal(recs["rgba.png"][0], [[255, 255, 255], [10, 20, 30]])
  np.testing.assert_array_equal(recs["palette.png"][0], [[255, 0, 0], [0, 255, 0], [255, 255, 255]])
  assert np.abs(recs["photo.jpg"].astype(int) - [200, 30, 60]).max() <= 3
  assert recs["rot.jpg"].shape == (8, 4, 3)  # EXIF orientation applied
  assert recs["cmyk.jpg"].shape == (5, 6, 3) and recs["cmyk.jpg"].max() <= 3
  # unchanged folder: reused; changed folder: rebuilt, stale build removed
  assert data.get_source(f"folder:{folder}", "train", ddir).builder_dir == src.builder_dir
  Image.fromarray(np.zeros((3, 3), np.uint8)).save(folder / "zz_new.png")
  src2 = data.get_source(f"folder:{folder}", "train", ddir)
  assert len(src2) == len(src) + 1 and src2.dataset_id != src.dataset_id
  assert not os.path.exists(src.builder_dir)
  with pytest.raises(DataError, match=r"unknown split 'test'.*available splits: train"):
    data.get_source(f"folder:{folder}", "test", ddir)


def test_folder_split_subfolders(ddir, tmp_path):
  for split, n in (("train", 3), ("test", 2)):
    os.makedirs(tmp_path / "f" / split / "deeper")
    for i in range(n):
      Image.fromarray(grid_image(i, 6, 7)).save(tmp_path / "f" / split / "deeper" / f"{i}.png")
  tr = data.get_source(f"folder:{tmp_path / 'f'}", "train", ddir)
  te = data.get_source(f"folder:{tmp_path / 'f'}", "test", ddir)
  assert (len(tr), len(te)) == (3, 2)
  assert te[1]["name"] == os.path.join("test", "deeper", "1.png")


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_folder_bad_file_is_an_error(ddir, tmp_path, kind):
  folder = tmp_path / kind
  folder.mkdir()
  Image.fromarray(grid_image(0)).save(folder / "good.png")
  bad = folder / "x.png"
  if kind == "truncated":
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buf, format="PNG")
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  else:
    bad.write_text("this is not a PNG")
  with pytest.raises(DataError, match=rf"{bad}: not a readable image") as e:
    data.get_source(f"folder:{folder}", "train", ddir)
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match=rf"{bad}: not a readable image"):
    data.load_image_file(bad)
  # nothing half-built is left to be picked up later
  parent = os.path.join(ddir, "jaxvision_folder")
  assert not [d for d in os.listdir(parent) if d.startswith(kind + "_")]


def test_folder_errors(ddir, tmp_path):
  with pytest.raises(DataError, match="not a directory"):
    data.get_source(f"folder:{tmp_path / 'missing'}", "train", ddir)
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no image files"):
    data.get_source(f"folder:{tmp_path / 'empty'}", "train", ddir)


# ---------------------------------------------------------------------------------------------
# A TFDS dataset prepared elsewhere
# ---------------------------------------------------------------------------------------------

def _png(a):
  b = io.BytesIO()
  Image.fromarray(a).save(b, format="PNG")
  return b.getvalue()


class MyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Prepared 'elsewhere': 'lr' comes first, 'hr' is a 16-bit grey PNG."""
  name = "my_images"
  code_path = None
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "lr": tfds.features.Image(shape=(None, None, 3)),
        "hr": tfds.features.Image(shape=(None, None, 1), dtype=np.uint16),
        "id": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(4), "validation": self._generate_examples(2)}

  def _generate_examples(self, n):
    for i in range(n):
      hr = np.full((8, 10), 257 * (10 * i + 1), np.uint16)
      yield i, {"hr": _png(hr), "lr": _png(np.full((4, 5, 3), 3 * i, np.uint8)), "id": f"im{i}"}


def test_prepared_elsewhere(tmp_path):
  d = str(tmp_path)
  MyImages(data_dir=d, file_format="array_record").download_and_prepare()
  src = data.get_source("my_images", "train", d)
  assert src.image_key == "hr" and len(src) == 4
  values = sorted(int(src[i]["image"][0, 0, 0]) for i in range(4))
  assert values == [1, 11, 21, 31]  # 16-bit grey -> RGB uint8
  assert src[0]["image"].shape == (8, 10, 3) and src[0]["name"].startswith("im")
  lr = data.get_source("my_images:1.0.0", "validation", d, image_key="lr")
  assert lr[0]["image"].shape == (4, 5, 3) and len(lr) == 2
  assert len(data.get_source("my_images", "train[:3]", d)) == 3
  assert len(data.get_source(os.path.join(d, "my_images", "1.0.0"), "train", d)) == 4
  with pytest.raises(DataError, match=r"not found.*my_images:1\.0\.0"):
    data.get_source("nope", "train", d)
  with pytest.raises(DataError, match="unknown split 'test'.*train, validation"):
    data.get_source("my_images", "test", d)
  with pytest.raises(DataError, match="image_key 'id'.*hr, lr"):
    data.get_source("my_images", "train", d, image_key="id")
  with pytest.raises(DataError, match="version 2.0.0 not prepared"):
    data.get_source("my_images:2.0.0", "train", d)


# ---------------------------------------------------------------------------------------------
# Train loader
# ---------------------------------------------------------------------------------------------

def test_loader_batches_and_seeds(grid_src):
  mk = functools.partial(data.make_train_loader, grid_src, batch_size=3, crop_size=16,
                         worker_count=0)
  loader = mk(seed=7)
  assert isinstance(loader, data.grain.DataLoader)
  a = take(iter(loader), 5)
  for b in a:
    assert set(b) == {"input", "target"}
    for v in b.values():
      assert v.shape == (3, 16, 16, 3) and v.dtype == np.float32
      assert 0.0 <= v.min() and v.max() <= 1.0
    np.testing.assert_array_equal(b["input"], b["target"])
  assert_batches_equal(a, take(iter(mk(seed=7)), 5))
  assert batches_differ(a, take(iter(mk(seed=8)), 5))


def test_loader_epochs_shuffle_and_flips(grid_src):
  it = iter(data.make_train_loader(grid_src, batch_size=1, crop_size=8, seed=0, worker_count=0,
                                   num_epochs=2))
  batches = list(it)  # finite
  assert len(batches) == 2 * GRID_N
  ids = [ids_of(b)[0] for b in batches]
  assert sorted(ids[:GRID_N]) == sorted(ids[GRID_N:]) == list(range(GRID_N))
  assert ids[:GRID_N] != ids[GRID_N:]  # reshuffled each epoch
  flipped = 0
  for b in batches:  # every crop is a contiguous window, maybe mirrored left-right
    x = np.round(b["input"][0] * 255).astype(int)
    assert (np.diff(x[:, :, 1], axis=0) == 5).all()
    dx = np.diff(x[:, :, 2], axis=1)
    assert (dx == 5).all() or (dx == -5).all()
    flipped += int((dx == -5).all())
  assert 0 < flipped < len(batches)
  no_flip = list(iter(data.make_train_loader(grid_src, batch_size=2, crop_size=8, seed=0,
                                             worker_count=0, num_epochs=1, flips=False)))
  assert len(no_flip) == GRID_N // 2
  assert all((np.diff(b["input"][..., 2], axis=2) > 0).all() for b in no_flip)


def test_loader_shards_disjoint_and_cover(grid_src):
  seen = []
  for shard in range(2):
    loader = data.make_train_loader(grid_src, batch_size=1, crop_size=8, seed=3, worker_count=0,
                                    shard_index=shard, shard_count=2, num_epochs=1)
    seen.append([ids_of(b)[0] for b in iter(loader)])
  assert len(seen[0]) == len(seen[1]) == GRID_N // 2
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(GRID_N))
  with pytest.raises(DataError, match="cannot feed 11 shards"):
    data.make_train_loader(grid_src, batch_size=1, crop_size=8, seed=3, worker_count=0,
                           shard_index=0, shard_count=11)


def test_loader_pair_fn_same_window(grid_src):
  loader = data.make_train_loader(grid_src, batch_size=4, crop_size=12, seed=1, worker_count=0,
                                  pair_fn=HalfTarget())
  for b in take(iter(loader), 3):
    assert set(b) == {"input", "target"}  # the string "name" is dropped
    np.testing.assert_allclose(b["target"], b["input"] * 0.5, rtol=0, atol=1e-7)


def test_small_images_are_reflect_padded(ddir, tmp_path):
  (tmp_path / "tiny").mkdir()
  img = grid_image(1, 5, 7)
  Image.fromarray(img).save(tmp_path / "tiny" / "a.png")
  src = data.get_source(f"folder:{tmp_path / 'tiny'}", "train", ddir)
  (b,) = data.make_eval_batches(src, crop_size=16)
  x = np.round(b["input"][0] * 255).astype(np.uint8)
  assert x.shape == (16, 16, 3)
  np.testing.assert_array_equal(x, np.pad(img, ((5, 6), (4, 5), (0, 0)), mode="reflect"))
  it = iter(data.make_train_loader(src, batch_size=2, crop_size=16, seed=0, worker_count=0))
  assert next(it)["input"].shape == (2, 16, 16, 3)


def test_iterator_state_roundtrip(grid_src):
  loader = data.make_train_loader(grid_src, batch_size=3, crop_size=8, seed=5, worker_count=0)
  it = iter(loader)
  take(it, 4)  # crosses an epoch boundary (10 records, 3 per batch)
  state = it.get_state()
  expected = take(it, 5)
  it.set_state(state)
  assert_batches_equal(take(it, 5), expected)
  fresh = iter(loader)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 5), expected)
  other = iter(data.make_train_loader(grid_src, batch_size=3, crop_size=8, seed=6, worker_count=0))
  with pytest.raises(ValueError, match="Sampler"):
    other.set_state(state)


def test_orbax_checkpoint_roundtrip(grid_src, tmp_path):
  import orbax.checkpoint as ocp
  loader = data.make_train_loader(grid_src, batch_size=2, crop_size=8, seed=11, worker_count=0)
  it = iter(loader)
  take(it, 3)
  pytree = {"w": np.arange(6, dtype=np.float32), "step": np.array(3, np.int32)}
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(pytree),
                                         data=data.checkpoint_save_arg(it)))
    mngr.wait_until_finished()
  expected = take(it, 4)
  assert os.path.isfile(tmp_path / "ckpt" / "3" / "data" / "process_0-of-1.json")
  fresh = iter(loader)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    assert mngr.latest_step() == 3
    restored = mngr.restore(3, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(pytree), data=data.checkpoint_restore_arg(fresh)))
  np.testing.assert_array_equal(restored["state"]["w"], pytree["w"])
  assert restored["data"] is fresh
  assert_batches_equal(take(fresh, 4), expected)


def test_workers_match_in_process(grid_src):
  """worker_count=2 (grain worker processes) gives the batches of worker_count=0; restoring a
  state into a fresh multi-worker iterator continues exactly."""
  mk = functools.partial(data.make_train_loader, grid_src, batch_size=3, crop_size=8, seed=2,
                         pair_fn=HalfTarget())
  ref = take(iter(mk(worker_count=0)), 6)
  loader = mk(worker_count=2)
  it = iter(loader)
  assert_batches_equal(take(it, 3), ref[:3])
  state = it.get_state()
  assert_batches_equal(take(it, 3), ref[3:])
  del it
  fresh = iter(loader)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), ref[3:])
  del fresh


# ---------------------------------------------------------------------------------------------
# Eval batches
# ---------------------------------------------------------------------------------------------

def test_eval_batches(grid_src):
  a = data.make_eval_batches(grid_src, crop_size=16, batch_size=3)
  assert [b["input"].shape[0] for b in a] == [3, 3, 3, 1]  # nothing dropped
  assert_batches_equal(a, data.make_eval_batches(grid_src, crop_size=16, batch_size=3))
  assert ids_of(a[0]) == [0, 1, 2]
  x = np.round(a[0]["input"][0] * 255).astype(int)  # centre window: rows 12.., cols 16..
  assert (x[0, 0, 1], x[0, 0, 2]) == (5 * (GRID_H - 16) // 2, 5 * (GRID_W - 16) // 2)
  full = data.make_eval_batches(grid_src, crop_size=None, max_images=2, pair_fn=HalfTarget())
  assert len(full) == 2 and full[0]["input"].shape == (1, GRID_H, GRID_W, 3)
  np.testing.assert_allclose(full[1]["target"], full[1]["input"] * 0.5)
  with pytest.raises(ValueError, match="batch_size=1"):
    data.make_eval_batches(grid_src, crop_size=None, batch_size=2)


# ---------------------------------------------------------------------------------------------
# Target cache
# ---------------------------------------------------------------------------------------------

def test_cached_pairs(grid_src, tmp_path, monkeypatch):
  d = str(tmp_path)
  mk = lambda radius=1, max_side=24: data.CachedPairs(  # noqa: E731
      "folder:grid", "train", "box_blur", functools.partial(box_blur, radius=radius),
      {"radius": radius}, max_side, d)
  cp = mk()
  CALLS["n"] = 0
  assert cp.prepare(grid_src, progress=False) == GRID_N and CALLS["n"] == GRID_N
  assert mk().prepare(grid_src, progress=False) == 0 and CALLS["n"] == GRID_N  # cached
  cp2 = pickle.loads(pickle.dumps(cp))
  out = cp2(grid_src[4])
  assert CALLS["n"] == GRID_N  # __call__ only reads
  assert out["input"].shape == (20, 24, 3) and out["input"].dtype == np.float32
  expected = box_blur(out["input"])
  CALLS["n"] -= 1
  np.testing.assert_allclose(out["target"], expected, atol=0.5 / 255 + 1e-6)  # PNG uint8
  np.testing.assert_array_equal(
      out["input"], data.resize_max_side(grid_image(4), 24).astype(np.float32) / 255)
  # files: one PNG per record + key.json, no temp files
  tdir = os.path.dirname(cp.target_path(0, grid_src.dataset_id))
  files = sorted(os.listdir(tdir))
  assert files == sorted(["key.json"] + [f"{i:07d}.png" for i in range(GRID_N)])
  assert json.load(open(os.path.join(tdir, "key.json")))["key"]["params"] == {"radius": 1}
  # other params -> other cache; a crash while writing leaves no file behind
  cp3 = mk(radius=2)
  assert cp3.root != cp.root

  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(Image.Image, "save", boom)
  with pytest.raises(OSError, match="disk full"):
    cp3(grid_src[0])
  monkeypatch.undo()
  t3 = os.path.dirname(cp3.target_path(0, grid_src.dataset_id))
  assert os.listdir(t3) == ["key.json"]
  # in the loader (full images via eval batches): targets are the cached ones, nothing computed
  CALLS["n"] = 0
  (b,) = data.make_eval_batches(grid_src, crop_size=None, pair_fn=cp, max_images=1)
  cached = data.load_image_file(cp.target_path(0, grid_src.dataset_id))
  np.testing.assert_array_equal(b["target"][0], cached.astype(np.float32) / 255)
  it = iter(data.make_train_loader(grid_src, batch_size=2, crop_size=8, seed=0, worker_count=0,
                                   pair_fn=cp))
  assert next(it)["target"].shape == (2, 8, 8, 3)
  assert CALLS["n"] == 0
