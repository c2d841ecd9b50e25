r"""Which concepts move in fine-tuning: how far two parameter sets of M differ, layer by layer.

The measures (pure; the command line that loads two checkpoints and writes the report is
``amp_debate.tools.drift``). Per top-level module of M (embedder, block_0 .., final_norm, head when
untied):

  relative parameter change  ||θ_b − θ_a|| / ||θ_a||, Frobenius norms over the module's leaves;
  linear CKA                 of the module's output representation under a and under b on the
                             same inputs (Kornblith et al. 2019, "Similarity of neural network
                             representations revisited", linear kernel, the plain (biased) HSIC
                             estimator on column-centred features; 1 = the same up to an
                             orthogonal transform and isotropic scaling),

with CKA split by input kind: plain task questions (``task``: ANSWER(q)) and protocol and
review questions (``protocol``: SUPPORT, STOP, VERDICT and REVIEW prompts about the same q).
A representation is the residual stream after the module (``Block`` sows it as ``residual``;
the embedder's and final norm's outputs are captured), pooled per prompt over its real
(non-PAD) tokens (``pool="mean"``) or taken at its last token, the one that predicts the first
answer token (``pool="last"``). The inputs are ``examples`` questions of ``task.sample``
(every level, uniformly) drawn with ``seed``; claims in the protocol prompts are the true
answer or another question's answer, by a fair coin.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.models.transformer import LanguageModel, attention_mask, leading_pad, position_ids
from amp_debate.procedure import protocol
from amp_debate.tasks.base import Task

# Input kinds: the protocol header of each kind's prompts.
KINDS: dict[str, tuple[str, ...]] = {
    "task": ("ANSWER",),
    "protocol": ("SUPPORT", "STOP", "VERDICT", "REVIEW"),
}
POOLS = ("mean", "last")
CKA_VARIANT = ("linear CKA (Kornblith et al. 2019), plain (biased) HSIC estimator on "
               "column-centred features")


# One input kind's prompts: (prompts int32[N, Lp], protocol header of each int32[N]).
Probe = tuple[jax.Array, jax.Array]


class DriftError(ValueError):
  """The two checkpoints cannot be compared as asked (a one-line message)."""


# ---- parameter change --------------------------------------------------------------------------
def module_order(params: Mapping[str, Any]) -> list[str]:
  """M's top-level module names in forward order: embedder, block_0 .. block_{L-1} (numerically),
  final_norm, head, then any others alphabetically."""

  def rank(name: str) -> tuple[int, int, str]:
    block = re.fullmatch(r"block_(\d+)", name)
    if block:
      return 1, int(block.group(1)), name
    return {"embedder": 0, "final_norm": 2, "head": 3}.get(name, 4), 0, name

  return sorted(params, key=rank)


def _squared_norm(tree) -> float:
  return float(sum(np.sum(np.square(np.asarray(leaf, np.float64)))
                   for leaf in jax.tree.leaves(tree)))


def relative_change(a, b) -> float:
  """||b − a|| / ||a|| over every leaf of two pytrees of one structure and shape (float64 on
  host). 0 when they are equal; inf when a is all zeros and b is not."""
  chex.assert_trees_all_equal_shapes(a, b)
  delta = _squared_norm(jax.tree.map(lambda x, y: np.asarray(y, np.float64) - np.asarray(x), a, b))
  if delta == 0.0:
    return 0.0
  size = _squared_norm(a)
  return float(np.sqrt(delta / size)) if size > 0 else float("inf")


def relative_changes(params_a: Mapping[str, Any], params_b: Mapping[str, Any]) -> dict[str, float]:
  """{module: relative_change} for every top-level module (``module_order``) and ``"total"``."""
  chex.assert_trees_all_equal_shapes(params_a, params_b)
  changes = {name: relative_change(params_a[name], params_b[name])
             for name in module_order(params_a)}
  changes["total"] = relative_change(params_a, params_b)
  return changes


# ---- representation similarity ----------------------------------------------------------------
def linear_cka(x, y) -> float:
  """Linear CKA of two representations of the same n examples (plain HSIC estimator).

  Args:
    x: [n, d1] features, one row per example.
    y: [n, d2].
  Returns:
    ||Ycᵀ Xc||_F² / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F) in [0, 1], with Xc, Yc the column-centred
    features (float64 on host); nan when either representation is constant over the examples.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  chex.assert_rank([x, y], 2)
  chex.assert_equal_shape_prefix([x, y], 1)
  x, y = x - x.mean(axis=0), y - y.mean(axis=0)
  norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
  if norm_x == 0.0 or norm_y == 0.0:
    return float("nan")
  return float(np.linalg.norm(y.T @ x) ** 2 / (norm_x * norm_y))


def pool_tokens(hidden: jax.Array, pad: jax.Array, how: str) -> jax.Array:
  """One feature vector per prompt.

  Args:
    hidden: [B, Lp, D] representations of left-padded prompts.
    pad: int32[B] leading PAD tokens per prompt.
    how: "mean" (over the real tokens, index >= pad) or "last" (the last token).
  Returns:
    float32[B, D].
  """
  chex.assert_rank(hidden, 3)
  chex.assert_shape(pad, hidden.shape[:1])
  hidden = hidden.astype(jnp.float32)
  if how == "last":
    return hidden[:, -1]
  if how != "mean":
    raise ValueError(f"pool must be one of {POOLS}, got {how!r}")
  real = (jnp.arange(hidden.shape[1])[None, :] >= pad[:, None]).astype(jnp.float32)
  return (hidden * real[..., None]).sum(1) / real.sum(1, keepdims=True)


def _captured(module, method_name: str) -> bool:
  """capture_intermediates filter: the embedder's and the final norm's outputs."""
  return module.name in ("embedder", "final_norm") and method_name == "__call__"


# Jitted per (model, pool, prompt shape): LanguageModel is a frozen, hashable description.
@functools.partial(jax.jit, static_argnums=0, static_argnames="pool")
def hidden_states(model: LanguageModel, params, prompts: jax.Array, *,
                  pool: str = "mean") -> dict[str, jax.Array]:
  """M's pooled representation of each prompt after every top-level module.

  The forward pass is ``answer_logits``' over the prompt alone (same positions and mask, so the
  prompt's representations are those M answers from); the numerics of M are untouched.

  Args:
    model: M.
    params: its parameters.
    prompts: int32[B, Lp] left-padded prompts (each with a real token).
    pool: "mean" or "last" (``pool_tokens``).
  Returns:
    {"embedder", "block_0" .. "block_{L-1}", "final_norm": float32[B, D]} (jit sorts the
    keys; ``module_order`` gives the forward order).
  """
  chex.assert_rank(prompts, 2)
  chex.assert_type(prompts, jnp.int32)
  prompt_len = prompts.shape[1]
  pad = leading_pad(prompts, pad_id=model.config.pad_id)
  index = jnp.arange(prompt_len)
  prefix = prompt_len if model.config.mask == "prefix" else None
  _, state = model.module.apply(
      {"params": params}, prompts, position_ids(index, pad),
      attention_mask(index, index, pad, prefix), capture_intermediates=_captured,
      mutable=["intermediates"])
  found = state["intermediates"]
  outputs = {"embedder": found["embedder"]["__call__"][0]}
  for i in range(model.config.num_layers):
    outputs[f"block_{i}"] = found[f"block_{i}"]["residual"][0]
  outputs["final_norm"] = found["final_norm"]["__call__"][0]
  pooled = {name: pool_tokens(h, pad, pool) for name, h in outputs.items()}
  chex.assert_shape(list(pooled.values()), (prompts.shape[0], model.config.d_model))
  return pooled


def layer_cka(states_a: Mapping[str, Any], states_b: Mapping[str, Any],
              rows: np.ndarray | None = None) -> dict[str, float]:
  """{layer: linear_cka(states_a[layer][rows], states_b[layer][rows])} in forward order (every
  row if rows is None); states map layer names to [n, D] features of the same examples."""
  if set(states_a) != set(states_b):
    raise ValueError(f"layer_cka: layers differ: {sorted(states_a)} vs {sorted(states_b)}")
  select = (lambda v: np.asarray(v)) if rows is None else (lambda v: np.asarray(v)[rows])
  return {name: linear_cka(select(states_a[name]), select(states_b[name]))
          for name in module_order(states_a)}


# ---- inputs -----------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 2))
def probe_prompts(task: Task, rng: jax.Array, examples: int) -> dict[str, Probe]:
  """The same ``examples`` questions asked as each kind of input.

  Args:
    task: the task (questions from ``task.sample``, every level uniformly).
    rng: PRNG key.
    examples: N, the number of prompts of each kind.
  Returns:
    {kind: (prompts int32[N, Lp], header int32[N])} for the kinds of ``KINDS``: ``task`` is
    ANSWER(q); ``protocol`` cycles through SUPPORT(q, c), STOP(q, c_even, c_odd),
    VERDICT(q, c_even, c_odd) and REVIEW(q, c), where c is the true answer or (a fair coin)
    another question's answer and the other claim of a pair is the other one.
  """
  question_rng, coin_rng = jax.random.split(rng)
  batch = task.sample(question_rng, examples)
  true, other = batch.answers, jnp.roll(batch.answers, 1, axis=0)
  honest = jax.random.bernoulli(coin_rng, 0.5, (examples, 1))
  claim, claim_odd = jnp.where(honest, true, other), jnp.where(honest, other, true)
  q = batch.questions
  built = {
      "ANSWER": jax.vmap(lambda n: protocol.answer_prompt(task, n))(q),
      "SUPPORT": jax.vmap(lambda n, c: protocol.support_prompt(task, n, c))(q, claim),
      "STOP": jax.vmap(lambda n, e, o: protocol.stop_prompt(task, n, e, o))(q, claim, claim_odd),
      "VERDICT": jax.vmap(lambda n, e, o: protocol.verdict_prompt(task, n, e, o))(
          q, claim, claim_odd),
      "REVIEW": jax.vmap(lambda n, c: protocol.review_prompt(task, n, c))(q, claim),
  }
  out = {}
  for kind, headers in KINDS.items():
    which = jnp.arange(examples) % len(headers)
    prompts = jnp.stack([built[h] for h in headers])[which, jnp.arange(examples)]
    header_ids = jnp.asarray([protocol.protocol_id(h) for h in headers], jnp.int32)[which]
    chex.assert_shape(prompts, (examples, protocol.prompt_len(task)))
    out[kind] = (prompts, header_ids)
  return out


# ---- the comparison -----------------------------------------------------------------------------
def check_comparable(config_a: Mapping[str, Any], config_b: Mapping[str, Any], params_a,
                     params_b) -> None:
  """Raises DriftError unless both checkpoints are of one task (name and options) and their
  parameter trees have one structure and shape."""
  task_a, task_b = config_a["task"], config_b["task"]
  options_a, options_b = dict(config_a["task_options"]), dict(config_b["task_options"])
  if (task_a, options_a) != (task_b, options_b):
    raise DriftError(f"the checkpoints are of different tasks: a is {task_a} {options_a}, "
                     f"b is {task_b} {options_b}")
  shapes_a = {jax.tree_util.keystr(k): np.shape(v)
              for k, v in jax.tree_util.tree_flatten_with_path(params_a)[0]}
  shapes_b = {jax.tree_util.keystr(k): np.shape(v)
              for k, v in jax.tree_util.tree_flatten_with_path(params_b)[0]}
  if shapes_a != shapes_b:
    names = sorted(set(shapes_a) | set(shapes_b))
    differ = [n for n in names if shapes_a.get(n) != shapes_b.get(n)]
    first = differ[0]
    raise DriftError(f"the checkpoints' models differ in shape at {len(differ)} parameters, e.g. "
                     f"{first}: a {shapes_a.get(first, 'missing')}, b "
                     f"{shapes_b.get(first, 'missing')} (compare their config.model)")


def compare(task: Task, model_a: LanguageModel, params_a, model_b: LanguageModel, params_b, *,
            examples: int = 512, seed: int = 0, pool: str = "mean") -> dict[str, Any]:
  """Relative parameter change and per-kind linear CKA between two parameter sets of M.

  Args:
    task: the task both were trained on.
    model_a, params_a: checkpoint a (the reference: changes are relative to its norms).
    model_b, params_b: checkpoint b, of the same parameter shapes.
    examples: prompts per input kind.
    seed: seeds the questions and claims (``probe_prompts``).
    pool: "mean" or "last" (``pool_tokens``).
  Returns:
    {"layers": [{"name", "relative_change", "cka": {kind: float | None}}] in forward order (None
    where a module has no representation, e.g. an untied head), "total_relative_change",
    "cka_by_header": {kind: {header: {layer: float}}}, "examples", "seed", "pool",
    "cka_variant"}.
  """
  if pool not in POOLS:
    raise DriftError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
  if examples < len(KINDS["protocol"]) * 2:
    raise DriftError(f"examples must be at least {len(KINDS['protocol']) * 2}, got {examples}")
  changes = relative_changes(params_a, params_b)
  cka, by_header = {}, {}
  probes = probe_prompts(task, jax.random.key(seed), examples)
  for kind, (prompts, headers) in probes.items():
    states_a = jax.device_get(hidden_states(model_a, params_a, prompts, pool=pool))
    states_b = jax.device_get(hidden_states(model_b, params_b, prompts, pool=pool))
    cka[kind] = layer_cka(states_a, states_b)
    headers = np.asarray(headers)
    if len(KINDS[kind]) > 1:
      by_header[kind] = {name: layer_cka(states_a, states_b, headers == protocol.protocol_id(name))
                         for name in KINDS[kind]}
  layers = []
  for name in module_order(params_a):
    layers.append({"name": name, "relative_change": changes[name],
                   "cka": {kind: cka[kind].get(name) for kind in KINDS}})
  return {"layers": layers, "total_relative_change": changes["total"], "cka_by_header": by_header,
          "examples": examples, "seed": seed, "pool": pool, "cka_variant": CKA_VARIANT}
