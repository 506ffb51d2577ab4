"""CDF tables saved with the checkpoint: idempotent `update`, saved once per step,
and a file decodes with exactly the tables that encoded it."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision import cli
from jaxvision.compression import coding, convert, files
from jaxvision.compression import tables as T
from jaxvision.compression.layers import EntropyBottleneck
from jaxvision.core import checkpoint as jv_ckpt
from jaxvision.core import weights
from jaxvision.core.registry import create_model
from tests.compression.reference import random_params

NAME, N, M = "bmshj2018-factorized", 8, 12


def _variables(seed):
  """Plausible params without init (no compile): random weights, exact quantiles."""
  model = create_model(NAME, quality=3, N=N, M=M)
  p = random_params(convert._param_shapes(model), seed)
  p["entropy_bottleneck"] = EntropyBottleneck(M).solve_quantiles(p["entropy_bottleneck"])
  return model, {"params": jax.tree.map(jnp.asarray, p)}


def _same(a, b):
  assert set(a) == set(b)
  for k in a:
    for x, y in zip(a[k], b[k]):
      assert x.dtype == y.dtype == np.int32 and np.array_equal(x, y)


def test_update_twice_and_saved_tables_identical(tmp_path):
  model, variables = _variables(0)
  t1, t2 = T.update(model, variables), T.update(model, variables)
  _same(t1, t2)
  hyper = create_model("mbt2018", N=N, M=M)
  assert T.tables_crc(T.update(hyper, {"params": {"entropy_bottleneck": variables["params"][
      "entropy_bottleneck"]}})) == T.tables_crc(T.update(hyper, {"params": {
          "entropy_bottleneck": variables["params"]["entropy_bottleneck"]}}))
  # saved once per step, then read back (not rebuilt: the file's mtime stays)
  tables = T.checkpoint_tables(str(tmp_path), 7, model, variables)
  path = tmp_path / T.TABLES_DIR / "7.npz"
  mtime = path.stat().st_mtime_ns
  again = T.checkpoint_tables(str(tmp_path), 7, model, variables)
  _same(tables, t1)
  _same(again, t1)
  assert path.stat().st_mtime_ns == mtime
  assert T.tables_crc(again) == T.tables_crc(t1)
  # other params under the same step number (a run trained afresh): rebuilt
  model2, variables2 = _variables(1)
  other = T.checkpoint_tables(str(tmp_path), 7, model2, variables2)
  assert T.tables_crc(other) != T.tables_crc(t1)
  path.write_bytes(b"not an npz")
  with pytest.raises(ValueError, match="unreadable CDF tables"):
    T.checkpoint_tables(str(tmp_path), 7, model, variables)


def test_checkpoint_restored_decodes_files_written_before(tmp_path, capsys):
  model, variables = _variables(2)
  work = str(tmp_path / "codec")
  weights.save_workdir(work, variables, task="compression", model_name=NAME,
                       model_kwargs={"quality": 3, "N": N, "M": M})
  img = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
  Image.fromarray(img).save(tmp_path / "in.png")
  jvc, png = str(tmp_path / "a.jvc"), str(tmp_path / "a.png")
  assert cli.main(["compress", "--checkpoint", work, str(tmp_path / "in.png"), jvc]) == 0
  header, strings = files.read_jvc(jvc)
  saved, _ = T.load_tables(os.path.join(work, T.TABLES_DIR, "0.npz"))
  assert header.tables_crc == T.tables_crc(saved)
  # A fresh restore of the checkpoint (as another process would) decodes it.
  _, restored, step = jv_ckpt.load_variables(work)
  assert step == 0
  x = coding.decompress(model, restored, saved, strings, header.latent_shapes, 50, 70)
  np.testing.assert_array_equal(
      x, coding.reconstruct(model, variables, img[None].astype(np.float32) / 255))
  assert cli.main(["decompress", "--checkpoint", work, jvc, png]) == 0
  got = np.asarray(Image.open(png))
  assert np.array_equal(got, (x[0] * 255 + 0.5).astype(np.uint8))
  # Other tables than the file's: a clear one-line error, no output.
  _, other = _variables(3)
  T.save_tables(os.path.join(work, T.TABLES_DIR, "0.npz"), T.update(model, other),
                T.params_crc(variables))
  capsys.readouterr()
  out = tmp_path / "b.png"
  assert cli.main(["decompress", "--checkpoint", work, jvc, str(out)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "other CDF tables" in err[0] and not out.exists()


def test_compress_and_decompress_folders(tmp_path, capsys):
  """compress DIR OUT_DIR: a .jvc per good image, the damaged one named, exit 1; then
  decompress OUT_DIR PNG_DIR gives back every size, a damaged .jvc named likewise."""
  from tests.conftest import assert_folder_run, image_folder
  _, variables = _variables(4)
  work = str(tmp_path / "codec")
  weights.save_workdir(work, variables, task="compression", model_name=NAME,
                       model_kwargs={"quality": 3, "N": N, "M": M})
  folder, stems, damaged = image_folder(tmp_path, grey=True)
  jvcs = tmp_path / "jvc"
  code = cli.main(["compress", "--checkpoint", work, folder, str(jvcs)])
  assert_folder_run(code, capsys.readouterr().err, jvcs, stems, damaged, ".jvc", "compress")
  (jvcs / "broken.jvc").write_bytes((jvcs / "a.jvc").read_bytes()[:9])
  (jvcs / "skipped.png").write_bytes(b"")  # not a .jvc: not an input of decompress
  pngs = tmp_path / "png"
  code = cli.main(["decompress", "--checkpoint", work, str(jvcs), str(pngs)])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 2, err
  assert err[0].startswith(f"jaxvision decompress: error: {jvcs / 'broken.jvc'}: ")
  assert err[1] == "jaxvision decompress: error: 1 of 4 inputs failed"
  assert sorted(os.listdir(pngs)) == ["a.png", "b.png", "c.png"]
  for s in stems:
    got, src = Image.open(pngs / f"{s}.png"), Image.open(os.path.join(folder, f"{s}.png"))
    assert got.size == src.size and got.mode == src.mode  # grey a.png stays grey
  # a folder's output must be a folder
  assert cli.main(["compress", "--checkpoint", work, folder, str(tmp_path / "x.jvc")]) == 1
  assert "must be a folder too" in capsys.readouterr().err
  assert not (tmp_path / "x.jvc").exists()
