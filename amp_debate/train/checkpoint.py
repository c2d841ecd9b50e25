"""Checkpoints: a thin wrapper over Orbax's ``CheckpointManager`` (async, atomic, keep-N + best).

  with Checkpointer(workdir + "/checkpoints", keep=3, best_metric="eval/accuracy") as ckpt:
    if ckpt.latest_step() is not None:
      config_lib.check_compatible(ckpt.saved_config(), config.to_dict())
      state, _ = ckpt.restore(jax.eval_shape(init_fn))  # init_fn jitted with out_shardings
    ...
    ckpt.save(step, state, config=config.to_dict(), metrics={"eval/accuracy": acc})

Layout (one directory per step, all written by Orbax):

  <directory>/<step>/state/     the state pytree (``StandardSave``: OCDBT/zarr arrays, _METADATA)
  <directory>/<step>/config/    the run config as JSON (``JsonSave``), returned by ``saved_config``
  <directory>/<step>/metrics/   the metrics given to ``save`` (only when ``best_metric`` is set)
  <directory>/<step>/commit_success.txt, _CHECKPOINT_METADATA

Atomicity. Orbax writes a step into ``<step>.orbax-checkpoint-tmp``, puts commit_success.txt in it
last and then renames it to ``<step>``. A directory counts as a checkpoint only when its name is a
step number AND it holds commit_success.txt: on a local disk Orbax's default listing checks only the
name, so we give it a name format that also requires the marker. A save killed midway leaves the tmp
directory (removed by the primary process when a Checkpointer next opens the directory); a step
directory without the marker (e.g. a copy gone wrong) is ignored, and replaced if that step is saved
again. Either way ``latest_step`` and ``restore`` use the previous complete checkpoint.

Retention: the newest ``keep`` checkpoints plus the best one by ``metrics[best_metric]``. Orbax's
own ``max_to_keep`` + ``best_fn`` keep the ``keep`` BEST (the step just written can be deleted at
once) and by default never delete checkpoints saved without metrics (preemption saves would pile
up), so we pass an explicit preservation policy: ``LatestN(keep)`` or ``BestN(n=1)`` over the
checkpoints with metrics. A checkpoint whose metrics lack ``best_metric`` or hold NaN ranks worst.

Restore is bitwise and returns the leaves with ``abstract_state``'s shapes, dtypes and shardings
(``StandardRestore``); a saved leaf whose shape or dtype differs (Orbax would silently cast dtypes)
or a different tree is refused. Typed PRNG keys (``jax.random.key``) need nothing special: Orbax
0.12.8 saves their key data and records the impl, and restores a typed key with that impl.

Errors users can hit (no checkpoint, missing step, corrupt or mismatched checkpoint, config not
JSON) raise ``CheckpointError``: one line naming the directory and
step, never a raw Orbax/TensorStore traceback (the original error is chained as ``__cause__``).

Multi-process: every process constructs the Checkpointer and calls save/restore/wait with the same
arguments; Orbax synchronises them and writes shared files from the primary process only. Leaves
must then be global arrays (e.g. outputs of a jit with out_shardings): Orbax refuses host-local
ones. This module itself only reads files (metrics JSON, commit markers).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Self

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as managers
from orbax.checkpoint.path import atomicity

COMMIT_MARKER = atomicity.COMMIT_SUCCESS_FILE  # "commit_success.txt", written last before rename
STATE, CONFIG, METRICS = "state", "config", "metrics"  # item names inside a step directory
_MAX_LISTED = 5  # mismatches listed in one error message


class CheckpointError(ValueError):
  """A checkpoint cannot be saved or restored as asked; the message says which and why."""


def _one_line(error: BaseException, limit: int = 200) -> str:
  """``Type: first line of the message``, shortened: enough to tell what Orbax choked on."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _path_name(path: Sequence[Any]) -> str:
  """A pytree key path as Orbax names leaves: ``opt_state.1.0.mu.w``."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return ".".join(parts)


def _describe(shape: Sequence[int], dtype: Any) -> str:
  return f"{dtype}[{','.join(str(d) for d in shape)}]"


def _is_key(dtype: Any) -> bool:
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _to_json(value: Any, what: str) -> Any:
  """``value`` as JSON would give it back (tuples become lists, numpy/jax scalars numbers);
  CheckpointError naming the key that JSON cannot hold."""

  def walk(v: Any, path: str) -> Any:
    if isinstance(v, Mapping):
      out = {}
      for k, sub in v.items():
        if not isinstance(k, str):
          raise CheckpointError(f"{what}: key {path + '.' if path else ''}{k!r} is not a string; "
                                f"checkpointed configs must be JSON")
        out[k] = walk(sub, f"{path}.{k}" if path else k)
      return out
    if isinstance(v, (list, tuple)):
      return [walk(sub, f"{path}.{i}" if path else str(i)) for i, sub in enumerate(v)]
    if getattr(v, "shape", None) == () and hasattr(v, "item"):  # np.float32(1), jnp.int32(2)
      v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
      return v
    raise CheckpointError(f"{what}: {path or 'the value'} is a {type(v).__name__} ({v!r:.60}), "
                          f"which JSON cannot hold; pass plain values (e.g. config.to_dict())")

  return walk(value, "")


def _dataclass_with_none(x: Any) -> bool:
  return (dataclasses.is_dataclass(x) and not isinstance(x, type)
          and any(getattr(x, f.name) is None for f in dataclasses.fields(x)))


def _without_none_fields(tree: Any) -> Any:
  """``tree`` (the state, or a dict of them) with every dataclass node that has None fields (an
  optional part switched off, e.g. ``TrainState.anchor_params`` without the KL anchor) written as a
  dict of its other fields. Orbax records a None field as a node of the tree, so without this a
  state gaining an optional field would no longer restore the checkpoints written before it
  existed; with it, a state without the optional part is saved exactly as before."""
  def one(x):
    if _dataclass_with_none(x):
      return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)
              if getattr(x, f.name) is not None}
    return x
  if isinstance(tree, dict):
    return {k: one(v) for k, v in tree.items()}
  return one(tree)


def _with_none_fields(restored: Any, abstract: Any) -> Any:
  """The inverse of ``_without_none_fields``: the dataclass nodes of ``abstract`` rebuilt around
  the restored fields, their None fields None again."""
  def one(r, a):
    if _dataclass_with_none(a) and isinstance(r, dict):
      return dataclasses.replace(a, **r)
    return r
  if isinstance(abstract, dict) and isinstance(restored, dict):
    return {k: one(restored[k], a) for k, a in abstract.items()}
  return one(restored, abstract)


class Checkpointer:
  """Saves and restores (state, config) checkpoints under ``directory``; see the module docstring.

  Args:
    directory: the checkpoint root (created if missing); local path or a URL Orbax supports.
    keep: how many of the newest checkpoints to keep (>= 1).
    best_metric: if set, also keep the checkpoint with the best ``metrics[best_metric]``.
    best_mode: "max" or "min": which value of ``best_metric`` is best.
    async_save: save in the background (``save`` returns once the arrays are copied to host, so
      the caller may donate or overwrite them); ``wait``/``close`` block until it is written.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max", async_save: bool = True):
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
      raise CheckpointError(f"checkpoint: keep must be an integer >= 1, got {keep!r}")
    if best_mode not in ("max", "min"):
      raise CheckpointError(f"checkpoint: best_mode must be 'max' or 'min', got {best_mode!r}")
    if best_metric is not None and (not isinstance(best_metric, str) or not best_metric):
      raise CheckpointError(f"checkpoint: best_metric must be a metric name, got {best_metric!r}")
    directory = os.fspath(directory)
    self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
    self.keep, self.best_metric, self.best_mode = keep, best_metric, best_mode
    self._pending: int | None = None  # step of the last save not yet waited for
    self._closed = False
    self._check_metrics_files()

    policies: list[Any] = [managers.LatestN(n=keep)]
    if best_metric is not None:
      policies.append(managers.BestN(get_metric_fn=self._metric_value, reverse=best_mode == "min",
                                     n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        # Only directories named <step> holding commit_success.txt are checkpoints.
        step_name_format=ocp.path.step.standard_name_format(
            temporary_path_cls=atomicity.CommitFileTemporaryPath),
        preservation_policy=managers.AnyPreservationPolicy(policies),
        best_fn=self._metric_value if best_metric is not None else None,  # makes Orbax save metrics
        best_mode=best_mode,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
    )
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name, save_args, restore_args, handler in (
        (STATE, ocp.args.StandardSave, ocp.args.StandardRestore, ocp.StandardCheckpointHandler),
        (CONFIG, ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)):
      registry.add(name, save_args, handler)
      registry.add(name, restore_args, handler)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            handler_registry=registry)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint: cannot open checkpoint directory {self.directory} "
                            f"({_one_line(e)})") from e

  # -- queries ---------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Steps of the checkpoints kept, ascending (a save still in flight included; see ``wait``)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest checkpoint's step, None if there is none. Incomplete directories never count; a
    save of this Checkpointer still in flight does (``wait()`` first to see only finished ones)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def saved_config(self, step: int | None = None) -> dict | None:
    """The config saved with ``step`` (default: the latest); None if there is no checkpoint.
    CheckpointError if ``step`` is not a complete checkpoint or its config cannot be read."""
    self.wait()
    if step is None and self.latest_step() is None:
      return None
    step = self._resolve(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{CONFIG: ocp.args.JsonRestore()}))
      config = restored[CONFIG]
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e) from e
    if not isinstance(config, dict):
      raise self._corrupt(step, TypeError(f"config is a {type(config).__name__}, not a dict"))
    return config

  # -- save ------------------------------------------------------------------------------------

  def save(self, step: int, state: Any, *, config: Mapping[str, Any],
           metrics: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Starts saving ``state`` (a pytree of jax arrays) and ``config`` as checkpoint ``step``.

    Returns False without saving when ``step`` is not newer than the latest checkpoint, unless
    ``force`` (then any step not yet saved; until the directory is reopened, retention counts it as
    the newest). ``config``: JSON-able dict. ``metrics``: scalars ranking checkpoints for
    ``best_metric`` (ignored without one), which they must contain when given; a checkpoint saved
    without metrics (e.g. on preemption) is kept only while among the newest ``keep``. Waits for
    the previous save first, and raises its failure if it failed.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
      raise CheckpointError(f"checkpoint: step must be a non-negative integer, got {step!r}")
    config = _to_json(config, f"checkpoint step {step}: config")
    if not isinstance(config, dict):
      raise CheckpointError(f"checkpoint step {step}: config must be a dict, got "
                            f"{type(config).__name__}")
    metrics = self._check_metrics(step, metrics)
    self.wait()
    if force and step in self.all_steps():
      raise CheckpointError(f"checkpoint: step {step} is already saved in {self.directory}")
    args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(_without_none_fields(state)),
                                 CONFIG: ocp.args.JsonSave(config)})
    try:
      saved = self._manager.save(step, args=args, metrics=metrics, force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint: saving step {step} to {self.directory} failed "
                            f"({_one_line(e)})") from e
    if saved:
      self._pending = step
    return bool(saved)

  def wait(self) -> None:
    """Blocks until the pending save (if any) is written; CheckpointError if it failed."""
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._manager.reload()
      raise CheckpointError(f"checkpoint: saving step {step} to {self.directory} failed "
                            f"({_one_line(e)})") from e
    # Orbax logs (and swallows) errors of the background write; a missing marker reveals them.
    if step is not None and not (self._step_dir(step) / COMMIT_MARKER).exists():
      self._manager.reload()
      raise CheckpointError(f"checkpoint: saving step {step} to {self.directory} failed (no "
                            f"{COMMIT_MARKER} after the write; see the log for Orbax's error); the "
                            f"latest complete checkpoint is step {self.latest_step()}")

  # -- restore ---------------------------------------------------------------------------------

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """(state, saved config) of checkpoint ``step`` (default: the latest).

    abstract_state: the state's structure, e.g. ``jax.eval_shape(init_fn)``: leaves with shape,
      dtype and (optionally) a concrete ``sharding``; the restored arrays get exactly these. A
      sharding over an AbstractMesh (what ``jax.eval_shape`` of an un-jitted function gives for
      sharded arrays) is refused: eval_shape the init jitted with ``out_shardings`` instead.

    CheckpointError if ``step`` is not a complete checkpoint, if its tree, shapes, dtypes or key
    impls differ from ``abstract_state``'s, or if it cannot be read (corrupt).
    """
    self.wait()
    step = self._resolve(step)
    self._check_abstract(abstract_state)
    full_abstract, abstract_state = abstract_state, _without_none_fields(abstract_state)
    try:
      saved_tree = self._manager.item_metadata(step)[STATE]
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e) from e
    self._check_matches(step, getattr(saved_tree, "tree", saved_tree), abstract_state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{STATE: ocp.args.StandardRestore(abstract_state), CONFIG: ocp.args.JsonRestore()}))
      state, config = restored[STATE], restored[CONFIG]
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e) from e
    self._check_restored(step, state, abstract_state)
    return _with_none_fields(state, full_abstract), config

  # -- lifetime --------------------------------------------------------------------------------

  def close(self) -> None:
    """Waits for pending saves, then releases Orbax's resources. Idempotent."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # -- helpers ---------------------------------------------------------------------------------

  def _step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def _resolve(self, step: int | None) -> int:
    """``step`` (default: the latest) if it is a kept, complete checkpoint; else CheckpointError."""
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise CheckpointError(f"checkpoint: no checkpoint in {self.directory}")
      return steps[-1]
    if step not in steps:
      raise CheckpointError(f"checkpoint: no complete checkpoint for step {step} in "
                            f"{self.directory} (complete steps: {steps})")
    return step

  def _corrupt(self, step: int, error: BaseException) -> CheckpointError:
    earlier = [s for s in self.all_steps() if s < step]
    hint = (f"; delete {self._step_dir(step)} (or pass step=) to use step {earlier[-1]}" if earlier
            else "")
    return CheckpointError(f"checkpoint: step {step} in {self.directory} is corrupt or unreadable "
                           f"({_one_line(error)}){hint}")

  def _metric_value(self, metrics: Mapping[str, Any]) -> float:
    """metrics[best_metric] as a float; a missing or NaN value gives the worst rank (-inf when
    best_mode is "max", +inf when "min")."""
    worst = -math.inf if self.best_mode == "max" else math.inf
    try:
      value = float(metrics[self.best_metric])
    except (KeyError, TypeError, ValueError):
      return worst
    return worst if math.isnan(value) else value

  def _check_metrics(self, step: int, metrics: Mapping[str, Any] | None) -> dict | None:
    """Metrics as {name: float} for Orbax (None when not tracking a best checkpoint)."""
    if metrics is None or self.best_metric is None:
      return None
    if self.best_metric not in metrics:
      raise CheckpointError(f"checkpoint step {step}: metrics lack best_metric "
                            f"{self.best_metric!r} (got {sorted(metrics)})")
    out = {}
    for name, value in metrics.items():
      try:
        out[str(name)] = float(value)
      except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint step {step}: metric {name!r} is not a scalar "
                              f"({value!r:.60})") from e
    return out

  def _check_metrics_files(self) -> None:
    """Orbax reads every step's metrics when it opens the directory and dies on bad JSON without
    naming the file; name it instead."""
    if not self.directory.exists():
      return
    for step_dir in self.directory.iterdir():
      path = step_dir / METRICS / METRICS
      if step_dir.name.isdigit() and path.exists():
        try:
          json.loads(path.read_text())
        except ValueError as e:
          raise CheckpointError(f"checkpoint: step {step_dir.name} in {self.directory} is corrupt "
                                f"(its metrics file {path} is not JSON: {e}); delete {step_dir} "
                                f"to use the other checkpoints") from e

  @staticmethod
  def _check_abstract(abstract_state: Any) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
      sharding = getattr(leaf, "sharding", None)
      if (isinstance(sharding, jax.sharding.NamedSharding)
          and isinstance(sharding.mesh, jax.sharding.AbstractMesh)):
        raise CheckpointError(f"checkpoint: abstract_state leaf {_path_name(path)} is sharded over "
                              f"an AbstractMesh; give it a concrete sharding (eval_shape the init "
                              f"jitted with out_shardings, or NamedSharding(mesh, spec))")

  def _check_matches(self, step: int, saved_tree: Any, abstract_state: Any) -> None:
    """Same leaves, shapes and dtypes (typed keys: their key data) on disk as in abstract_state."""
    saved = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
    wanted = {_path_name(p): leaf
              for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    problems = [f"{name} missing from the checkpoint" for name in wanted if name not in saved]
    problems += [f"{name} not in the state" for name in saved if name not in wanted]
    for name in wanted.keys() & saved.keys():
      want, have = wanted[name], saved[name]
      if not all(hasattr(x, a) for x in (want, have) for a in ("shape", "dtype")):
        continue
      shape, dtype = tuple(want.shape), want.dtype
      if _is_key(dtype):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
        shape, dtype = tuple(data.shape), data.dtype
      if (tuple(have.shape), str(have.dtype)) != (shape, str(dtype)):
        problems.append(f"{name} saved {_describe(have.shape, have.dtype)}, expected "
                        f"{_describe(shape, dtype)}")
    self._refuse(step, sorted(problems))

  def _check_restored(self, step: int, state: Any, abstract_state: Any) -> None:
    """Typed keys come back with the saved impl: refuse one that is not abstract_state's."""
    problems = []
    for (path, want), have in zip(jax.tree_util.tree_flatten_with_path(abstract_state)[0],
                                  jax.tree.leaves(state)):
      if hasattr(want, "dtype") and (have.dtype != want.dtype or have.shape != want.shape):
        problems.append(f"{_path_name(path)} saved {_describe(have.shape, have.dtype)}, expected "
                        f"{_describe(want.shape, want.dtype)}")
    self._refuse(step, problems)

  def _refuse(self, step: int, problems: list[str]) -> None:
    if problems:
      more = (f" and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else "")
      raise CheckpointError(f"checkpoint: step {step} in {self.directory} does not match the state "
                            f"to restore: {'; '.join(problems[:_MAX_LISTED])}{more}")
