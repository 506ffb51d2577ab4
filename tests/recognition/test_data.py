"""Identity data from a TFDS dataset (array_record, read through tfds' data_source)."""
import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision.core.errors import DataError
from jaxvision.recognition import data as D


class TinyFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A stand-in for tfds' lfw: its features ("label": the person's name as Text, "image"),
  a few people with 1-4 images each, each image filled with its own (person, image) code."""

  name = "tiny_faces"
  code_path = None  # nothing to download (no checksums file)
  VERSION = tfds.core.Version("1.0.0")
  PEOPLE = {f"person_{k:02d}": 1 + k % 4 for k in range(12)}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "label": tfds.features.Text(), "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png")}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for k, (name, n) in enumerate(self.PEOPLE.items()):
      for j in range(n):
        png = io.BytesIO()  # encoded here: tfds would need TensorFlow to encode arrays
        Image.fromarray(np.full((20, 16, 3), [k * 10, j * 40, 7], np.uint8)).save(png, "PNG")
        yield f"{name}_{j}", {"label": name, "image": png.getvalue()}


def test_tfds_identities_round_trip(tmp_path, monkeypatch):
  """tfds:NAME groups a prepared array_record dataset's images by their label: every
  person has exactly the images written for them (pixels and count), identities are split
  as for a folder (every 10th with two images held out), and P x K batches draw from them."""
  TinyFaces(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  ids = D.tfds_identities("tfds:tiny_faces")
  assert {k: len(v) for k, v in ids.items()} == TinyFaces.PEOPLE
  for k, (name, items) in enumerate(ids.items()):
    codes = sorted(tuple(it.load()[0, 0]) for it in items)
    assert codes == [(k * 10, j * 40, 7) for j in range(TinyFaces.PEOPLE[name])]
  train, test = D.identities("tfds:tiny_faces", "train"), D.identities("tfds:tiny_faces", "test")
  assert len(test) == 1 and len(test[0]) == TinyFaces.PEOPLE["person_09"]
  assert len(train) == len(TinyFaces.PEOPLE) - 1
  batch = D.PKBatches(train, 3, 2, 24, seed=0)[5]
  assert batch["input"].shape == (6, 24, 24, 3)
  assert sorted(np.bincount(batch["label"])) == [2, 2, 2]
  with pytest.raises(DataError, match="not found"):
    D.identities("tfds:no_such_faces", "train")
