"""MNIST for the sparse-pixel debate: the official test split offline, full MNIST through TFDS online.

``load(split) -> (images uint8[N, 28, 28], labels int32[N])``. Splits (fixed; name them in results,
``describe(split)`` gives the line to use):
  "test"           all 10,000 official test images
  "judge_train"    test images [0, 6000)        (training the sparse-pixel judge)
  "debater_train"  test images [6000, 8000)     (training the debaters against a fixed judge)
  "eval"           test images [8000, 10000)    (evaluation: judge baseline and debates)
  "train"          the 60,000 official training images (TFDS only; not available offline)

The three parts of the test split are disjoint, so the judge, the debaters and the evaluation never
share an image. Through TFDS the same names map to the same slices of the official test split
(``TFDS_SPLITS``), so a split name means the same images online and offline; with network access a
judge can instead be trained on full MNIST by asking for "train" (as the original debate paper did).

Offline copy: gzipped IDX files plus SHA256SUMS in ``$AMP_DEBATE_MNIST_DIR``, else
``../shared/data/mnist`` relative to the repository root, else relative to the working directory.
The files are verified against SHA256SUMS on every load and never copied anywhere.

Online: ``tfds.data_source("mnist")`` in array_record format, no TensorFlow at read time. Note that
preparing MNIST the first time runs TFDS's MNIST builder, which needs network access and TensorFlow
(it reads the raw files with ``tf.io.gfile``), and decoding its PNG images needs pillow or opencv.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib

import numpy as np

MNIST_DIR_ENV = "AMP_DEBATE_MNIST_DIR"
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
CHECKSUMS_FILE = "SHA256SUMS"
NUM_TEST = 10_000
JUDGE_TRAIN_END = 6_000
DEBATER_TRAIN_END = 8_000
IMAGE_SHAPE = (28, 28)

# Offline splits as slices of the official test split; TFDS split strings for the same data.
OFFLINE_SPLITS = {
    "test": slice(0, NUM_TEST),
    "judge_train": slice(0, JUDGE_TRAIN_END),
    "debater_train": slice(JUDGE_TRAIN_END, DEBATER_TRAIN_END),
    "eval": slice(DEBATER_TRAIN_END, NUM_TEST),
}
TFDS_SPLITS = {
    "train": "train",
    "test": "test",
    "judge_train": f"test[:{JUDGE_TRAIN_END}]",
    "debater_train": f"test[{JUDGE_TRAIN_END}:{DEBATER_TRAIN_END}]",
    "eval": f"test[{DEBATER_TRAIN_END}:]",
}
SOURCES = ("auto", "offline", "tfds")

# IDX element type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---- locating and verifying the offline copy --------------------------------------------------
def _candidate_dirs() -> list[pathlib.Path]:
  """Where the offline copy may be, in order of preference."""
  env = os.environ.get(MNIST_DIR_ENV)
  if env:
    return [pathlib.Path(env)]
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  relative = pathlib.Path("..", "shared", "data", "mnist")
  return [(repo_root / relative).resolve(), (pathlib.Path.cwd() / relative).resolve()]


def default_offline_dir() -> pathlib.Path:
  """The first existing candidate directory (or the preferred one, for error messages)."""
  candidates = _candidate_dirs()
  return next((d for d in candidates if d.is_dir()), candidates[0])


def read_checksums(directory: pathlib.Path) -> dict[str, str]:
  """Parses ``SHA256SUMS`` (``<hex>  <filename>`` lines) -> {filename: hex}."""
  path = directory / CHECKSUMS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"MNIST checksum file {path} is missing; the offline copy must hold "
                            f"{IMAGES_FILE}, {LABELS_FILE} and {CHECKSUMS_FILE}")
  sums = {}
  for line in path.read_text().splitlines():
    if line.strip():
      digest, name = line.split(maxsplit=1)
      sums[name.strip().lstrip("*")] = digest.lower()
  return sums


def verify_file(path: pathlib.Path, expected_sha256: str) -> None:
  """Raises ValueError unless the file's SHA256 equals ``expected_sha256``."""
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  if digest != expected_sha256:
    raise ValueError(f"checksum mismatch for {path}: sha256 {digest}, expected {expected_sha256} "
                     f"(from {CHECKSUMS_FILE}); the file is corrupt or not the official MNIST file. "
                     "Restore it from the MNIST distribution.")


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads a gzipped IDX file (header: 0, 0, dtype code, ndim, then ndim big-endian uint32 sizes).

  Returns:
    Array of the stored shape in native byte order.
  """
  data = gzip.decompress(path.read_bytes())
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an IDX file (bad magic {data[:4].hex()})")
  dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
  header = 4 + 4 * ndim
  shape = tuple(int(s) for s in np.frombuffer(data[4:header], dtype=">u4"))
  if len(data) != header + int(np.prod(shape)) * dtype.itemsize:
    raise ValueError(f"{path}: IDX header says shape {shape} of {dtype} but holds "
                     f"{len(data) - header} data bytes")
  return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_offline_test(offline_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The full official test split from the verified offline copy.

  Returns:
    (images uint8[10000, 28, 28], labels int32[10000]).
  """
  directory = pathlib.Path(offline_dir) if offline_dir is not None else default_offline_dir()
  if not directory.is_dir():
    raise FileNotFoundError(
        f"MNIST offline directory {directory} does not exist. Put the official test split (IDX .gz "
        f"files + {CHECKSUMS_FILE}) there, set ${MNIST_DIR_ENV}, pass offline_dir, or use "
        "source='tfds' with network access.")
  sums = read_checksums(directory)
  arrays = []
  for name in (IMAGES_FILE, LABELS_FILE):
    path = directory / name
    if not path.is_file():
      raise FileNotFoundError(f"MNIST file {path} is missing from the offline copy")
    if name not in sums:
      raise ValueError(f"{directory / CHECKSUMS_FILE} has no checksum for {name}")
    verify_file(path, sums[name])
    arrays.append(read_idx(path))
  images, labels = arrays
  if images.shape != (NUM_TEST, *IMAGE_SHAPE) or labels.shape != (NUM_TEST,):
    raise ValueError(f"unexpected MNIST shapes {images.shape}, {labels.shape} in {directory}")
  return images.astype(np.uint8), labels.astype(np.int32)


# ---- TFDS -------------------------------------------------------------------------------------
def load_tfds(split: str, *,
              data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """One split through ``tfds.data_source("mnist")`` (array_record; downloads on first use).

  Returns:
    (images uint8[N, 28, 28], labels int32[N]).
  """
  import tensorflow_datasets as tfds  # Deferred: the offline path needs no TFDS.

  try:
    source = tfds.data_source(
        "mnist", split=TFDS_SPLITS[split], data_dir=data_dir,
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(try_download_gcs=False)})
    examples = source.__getitems__(list(range(len(source))))
  except Exception as e:
    raise RuntimeError(
        f"loading MNIST split {split!r} through TFDS failed: {type(e).__name__}: {e}. The first use "
        "needs network access and tensorflow (TFDS's MNIST builder reads the raw files with "
        "tf.io.gfile); reading needs pillow or opencv to decode the images. Offline, use the "
        f"official test split (source='offline', see ${MNIST_DIR_ENV}).") from e
  images = np.stack([np.asarray(ex["image"], np.uint8).reshape(IMAGE_SHAPE) for ex in examples])
  labels = np.asarray([ex["label"] for ex in examples], np.int32)
  return images, labels


# ---- entry point ------------------------------------------------------------------------------
def load(split: str, *, source: str = "auto", offline_dir: str | os.PathLike | None = None,
         data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads an MNIST split.

  Args:
    split: "judge_train", "debater_train", "eval", "test" (offline or TFDS) or "train" (TFDS only).
    source: "offline" (the verified local copy), "tfds", or "auto": offline when the local copy
      exists and holds the split, TFDS otherwise.
    offline_dir: the local copy (default ``default_offline_dir()``).
    data_dir: TFDS data directory (default: TFDS's own, ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets).
  Returns:
    (images uint8[N, 28, 28], labels int32[N]); N = 6000 / 2000 / 2000 / 10000 / 60000.
  """
  directory = pathlib.Path(offline_dir) if offline_dir is not None else default_offline_dir()
  if resolve_source(split, source, directory) == "tfds":
    return load_tfds(split, data_dir=data_dir)
  images, labels = load_offline_test(directory)
  part = OFFLINE_SPLITS[split]
  return images[part], labels[part]


def resolve_source(split: str, source: str, offline_dir: pathlib.Path) -> str:
  """Checks ``split`` and ``source`` and resolves "auto": returns "offline" or "tfds"."""
  if split not in TFDS_SPLITS:
    raise ValueError(f"unknown MNIST split {split!r}; available: {sorted(TFDS_SPLITS)} "
                     f"(offline: {sorted(OFFLINE_SPLITS)})")
  if source not in SOURCES:
    raise ValueError(f"unknown MNIST source {source!r}; available: {SOURCES}")
  if source == "auto":
    source = "offline" if split in OFFLINE_SPLITS and offline_dir.is_dir() else "tfds"
  if source == "offline" and split not in OFFLINE_SPLITS:
    raise ValueError(f"MNIST split {split!r} is not in the offline copy (only the official test "
                     f"split: {sorted(OFFLINE_SPLITS)}); use source='tfds' with network access")
  return source


def describe(split: str, *, source: str = "auto",
             offline_dir: str | os.PathLike | None = None) -> str:
  """One line naming the data ``load(split, source=source, offline_dir=offline_dir)`` returns.

  E.g. "MNIST official test split [0, 6000) (split 'judge_train'; offline copy, t10k-images sha256
  8d422c7b0a1c1c79...)" or "MNIST through TFDS 'mnist', split 'test[:6000]' (split 'judge_train')".
  Offline, the digest is read from SHA256SUMS (``load`` verifies the files against it).
  """
  directory = pathlib.Path(offline_dir) if offline_dir is not None else default_offline_dir()
  if resolve_source(split, source, directory) == "tfds":
    return f"MNIST through TFDS 'mnist', split {TFDS_SPLITS[split]!r} (split {split!r})"
  part = OFFLINE_SPLITS[split]
  digest = read_checksums(directory).get(IMAGES_FILE, "unknown")
  return (f"MNIST official test split [{part.start}, {part.stop}) (split {split!r}; offline copy, "
          f"t10k-images sha256 {digest[:16]}...)")
