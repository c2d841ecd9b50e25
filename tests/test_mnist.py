"""MNIST loader: the verified offline test split, its fixed splits, errors, the TFDS plumbing."""

import gzip
import shutil

import numpy as np
import pytest

from amp_debate.data import mnist

# Label counts of the official MNIST test split.
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def shared_dir():
  directory = mnist.default_offline_dir()
  assert (directory / mnist.CHECKSUMS_FILE).is_file(), (
      f"shared MNIST data not found at {directory} (looked in {mnist._candidate_dirs()}); the test "
      f"suite expects ../shared/data/mnist beside the repository, or ${mnist.MNIST_DIR_ENV}")
  return directory


@pytest.fixture(scope="module")
def offline_test_split(shared_dir):
  return mnist.load("test", source="offline", offline_dir=shared_dir)


@pytest.fixture
def copy_dir(shared_dir, tmp_path):
  target = tmp_path / "mnist"
  shutil.copytree(shared_dir, target)
  for path in target.iterdir():
    path.chmod(0o644)  # the shared copy is read-only
  return target


def test_test_split_shapes_dtypes_and_labels(offline_test_split):
  images, labels = offline_test_split
  assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
  assert labels.shape == (10_000,) and labels.dtype == np.int32
  assert labels.min() == 0 and labels.max() == 9
  assert np.bincount(labels, minlength=10).tolist() == TEST_LABEL_COUNTS
  assert images.min() == 0 and images.max() == 255 and 20 < images.mean() < 50
  # Digits are centred: the border is nearly blank, the centre is not.
  assert images[:, :, :2].mean() < 1 and images[:, 10:18, 10:18].mean() > 50


def test_splits_partition_the_test_split(offline_test_split, shared_dir):
  images, labels = offline_test_split
  parts = [mnist.load(split, source="offline", offline_dir=shared_dir)
           for split in ("judge_train", "debater_train", "eval")]
  assert [p[0].shape for p in parts] == [(6_000, 28, 28), (2_000, 28, 28), (2_000, 28, 28)]
  np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), images)
  np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), labels)
  for _, split_labels in parts:
    assert (np.bincount(split_labels, minlength=10) > 0.07 * len(split_labels)).all()


def test_describe_names_the_data(shared_dir, tmp_path):
  line = mnist.describe("judge_train", source="offline", offline_dir=shared_dir)
  assert line == ("MNIST official test split [0, 6000) (split 'judge_train'; offline copy, "
                  "t10k-images sha256 8d422c7b0a1c1c79...)")
  assert "[6000, 8000)" in mnist.describe("debater_train", offline_dir=shared_dir)
  assert mnist.describe("eval", source="tfds") == (
      "MNIST through TFDS 'mnist', split 'test[8000:]' (split 'eval')")
  # auto without the offline copy -> TFDS
  assert "split 'train'" in mnist.describe("train", offline_dir=tmp_path / "nowhere")
  with pytest.raises(ValueError, match="unknown MNIST split 'validation'"):
    mnist.describe("validation")


def test_auto_uses_the_offline_copy_without_tfds(shared_dir, offline_test_split, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("auto must not go to TFDS when the offline copy exists")
  monkeypatch.setattr(mnist, "load_tfds", fail)
  images, labels = mnist.load("eval", offline_dir=shared_dir)
  np.testing.assert_array_equal(labels, offline_test_split[1][8_000:])


def test_environment_variable_sets_the_offline_dir(copy_dir, monkeypatch):
  monkeypatch.setenv(mnist.MNIST_DIR_ENV, str(copy_dir))
  assert mnist.default_offline_dir() == copy_dir
  assert mnist.load("eval")[0].shape == (2_000, 28, 28)


def test_checksum_mismatch_is_detected(copy_dir):
  path = copy_dir / mnist.LABELS_FILE
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f"checksum mismatch for .*{mnist.LABELS_FILE}") as error:
    mnist.load("test", source="offline", offline_dir=copy_dir)
  assert "\n" not in str(error.value)  # one line


def test_missing_files_and_dirs_are_clear_errors(copy_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist.*AMP_DEBATE_MNIST_DIR") as error:
    mnist.load("eval", source="offline", offline_dir=tmp_path / "nowhere")
  assert "\n" not in str(error.value)  # one line
  (copy_dir / mnist.IMAGES_FILE).unlink()
  with pytest.raises(FileNotFoundError, match=f"{mnist.IMAGES_FILE} is missing"):
    mnist.load("eval", source="offline", offline_dir=copy_dir)
  (copy_dir / mnist.CHECKSUMS_FILE).unlink()
  with pytest.raises(FileNotFoundError, match="checksum file .* is missing"):
    mnist.load("eval", source="offline", offline_dir=copy_dir)


def test_unknown_split_source_and_offline_train(shared_dir):
  with pytest.raises(ValueError, match="unknown MNIST split 'validation'.*judge_train"):
    mnist.load("validation", offline_dir=shared_dir)
  with pytest.raises(ValueError, match="unknown MNIST source 'web'"):
    mnist.load("eval", source="web", offline_dir=shared_dir)
  with pytest.raises(ValueError, match="'train' is not in the offline copy"):
    mnist.load("train", source="offline", offline_dir=shared_dir)


def test_read_idx_parses_and_rejects_headers(tmp_path):
  values = np.arange(24, dtype=">i2").reshape(2, 3, 4)
  header = bytes([0, 0, 0x0B, 3]) + np.asarray(values.shape, ">u4").tobytes()
  good = tmp_path / "good.gz"
  good.write_bytes(gzip.compress(header + values.tobytes()))
  np.testing.assert_array_equal(mnist.read_idx(good), values)
  short = tmp_path / "short.gz"
  short.write_bytes(gzip.compress(header + values.tobytes()[:-2]))
  with pytest.raises(ValueError, match="IDX header says shape"):
    mnist.read_idx(short)
  bad = tmp_path / "bad.gz"
  bad.write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
  with pytest.raises(ValueError, match="not an IDX file"):
    mnist.read_idx(bad)


def test_tfds_path_requests_the_mapped_split_and_converts(monkeypatch, tmp_path):
  import tensorflow_datasets as tfds
  calls = []

  class FakeSource(list):  # the part of tfds' ArrayRecordDataSource that load_tfds uses
    def __getitems__(self, indices):
      return [self[i] for i in indices]

  def fake_data_source(name, *, split, data_dir, download_and_prepare_kwargs):
    calls.append((name, split, data_dir))
    del download_and_prepare_kwargs
    return FakeSource({"image": np.full((28, 28, 1), i, np.uint8), "label": i % 10} for i in range(5))

  monkeypatch.setattr(tfds, "data_source", fake_data_source)
  images, labels = mnist.load("eval", source="tfds", data_dir=tmp_path)
  assert calls == [("mnist", "test[8000:]", tmp_path)]
  assert images.shape == (5, 28, 28) and images.dtype == np.uint8 and (images[3] == 3).all()
  assert labels.dtype == np.int32 and labels.tolist() == [0, 1, 2, 3, 4]
  mnist.load("train", offline_dir=tmp_path / "nowhere")  # auto: no offline copy -> TFDS
  assert calls[-1][:2] == ("mnist", "train")


def test_tfds_failure_explains_what_is_needed(monkeypatch):
  import tensorflow_datasets as tfds

  def broken(*args, **kwargs):
    raise ConnectionError("no route to host")

  monkeypatch.setattr(tfds, "data_source", broken)
  with pytest.raises(RuntimeError, match="(?s)no route to host.*network access.*source='offline'"):
    mnist.load("train")
