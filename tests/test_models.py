"""Models: KV-cache decoding, causality, padding, learnability, shapes, dtypes, judges, FLOPs.

Tolerance: float32 log-probs from the KV cache and from teacher forcing agree to 1e-5 absolute
(they differ only in the order of floating-point reductions).
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amp_debate import models, tasks
from amp_debate.models import transformer
from amp_debate.models.config import ModelConfig

ATOL = 1e-5
VOCAB = 24
PROMPT_LEN, ANSWER_LEN = 7, 4


def key(seed: int) -> jax.Array:
  """PRNG keys for tests: the "rbg" implementation compiles several times faster on CPU than the
  default threefry (the model accepts keys of any implementation)."""
  return jax.random.key(seed, impl="rbg")


def tiny(**overrides) -> ModelConfig:
  return models.preset("tiny", VOCAB, 16, **overrides)


@functools.lru_cache(maxsize=None)
def model_and_params(config: ModelConfig, seed: int = 0):
  model = models.LanguageModel(config)
  return model, model.init(key(seed))  # eager: its small ops compile once for all configs


@functools.lru_cache(maxsize=None)
def jitted(model: models.LanguageModel):
  """Jitted entry points of one model (cached so each compiles once per shape per session)."""
  sample = jax.jit(
      lambda params, prompts, rng, answer_len, temperature, greedy, prompt_lengths: model.sample(
          params, prompts, rng, answer_len=answer_len, temperature=temperature, greedy=greedy,
          prompt_lengths=prompt_lengths), static_argnums=3)
  log_prob = jax.jit(model.log_prob)
  return dict(
      # One signature for every call, so sampled and greedy decoding share a compile.
      sample=lambda params, prompts, rng, *, answer_len, temperature=1.0, greedy=False,
      prompt_lengths=None: sample(params, prompts, rng, answer_len, jnp.float32(temperature),
                                  jnp.bool_(greedy), prompt_lengths),
      reference=jax.jit(model.greedy_full_recompute, static_argnames=("answer_len",)),
      log_prob=lambda params, prompts, answers, *, temperature=1.0, **kw: log_prob(
          params, prompts, answers, temperature=jnp.float32(temperature), **kw),
      answer_logits=jax.jit(model.answer_logits),
      full_logits=jax.jit(functools.partial(full_logits, model), static_argnames=("prompt_len",)),
  )


def full_logits(model, params, tokens, prompt_len):
  """float32[B, T, V] logits at every position of an unpadded sequence."""
  index = jnp.arange(tokens.shape[1])
  pad = jnp.zeros(tokens.shape[:1], jnp.int32)
  prefix = prompt_len if model.config.mask == "prefix" else None
  logits, _ = model.module.apply({"params": params}, tokens, transformer.position_ids(index, pad),
                                 transformer.attention_mask(index, index, pad, prefix))
  return logits


def random_prompts(seed, batch=6, length=PROMPT_LEN, min_len=2):
  """Left-padded prompts with real lengths in [min_len, length] (no PAD among real tokens)."""
  rng = np.random.default_rng(seed)
  prompts = rng.integers(1, VOCAB, size=(batch, length))
  lengths = rng.integers(min_len, length + 1, size=batch)
  lengths[0] = length
  for row, n in enumerate(lengths):
    prompts[row, : length - n] = 0
  return jnp.asarray(prompts, jnp.int32), jnp.asarray(lengths, jnp.int32)


VARIANTS = {
    "prefix-learned-tied": dict(mask="prefix", positions="learned"),
    "causal-learned-untied": dict(mask="causal", positions="learned", tie_embeddings=False),
    "prefix-rotary-rmsnorm": dict(mask="prefix", positions="rotary", norm="rmsnorm"),
}


# ---- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_presets_build_and_count(name):
  config = models.preset(name, VOCAB, 32)
  assert config.num_layers >= 2 and config.d_model % config.num_heads == 0
  shapes = jax.eval_shape(models.LanguageModel(config).init, key(0))
  assert models.count_params(shapes) == models.param_count(config)


def test_small_preset_is_deeper_than_tiny_and_sizes_grow():
  counts = [models.param_count(models.preset(n, VOCAB, 32))
            for n in ("tiny", "small", "base", "large")]
  assert counts == sorted(counts)
  assert models.preset("small", VOCAB, 32).num_layers >= 4


@pytest.mark.parametrize("field, value", [
    ("num_layers", 0), ("d_model", -4), ("num_heads", 3), ("vocab_size", 1), ("max_len", 2.5),
    ("positions", "sinusoid"), ("mask", "bidirectional"), ("norm", "batchnorm"), ("dtype", "int8"),
    ("param_dtype", "float64"), ("dropout", 1.0), ("attention_impl", "flash"),
    ("tie_embeddings", "yes"), ("pad_id", VOCAB), ("pad_id", -1), ("pad_id", True),
])
def test_invalid_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    tiny().replace(**{field: value})


def test_config_errors_for_unknown_names():
  with pytest.raises(ValueError, match="models.preset must be one of"):
    models.preset("huge", VOCAB, 16)
  with pytest.raises(ValueError, match="unknown field"):
    models.preset("tiny", VOCAB, 16, width=3)
  with pytest.raises(ValueError, match="rotary"):
    tiny(positions="rotary", d_model=30, num_heads=10)


def test_sequence_longer_than_max_len_is_refused():
  model, params = model_and_params(tiny())
  prompts = jnp.ones((1, 14), jnp.int32)
  with pytest.raises(ValueError, match="max_len"):
    model.log_prob(params, prompts, jnp.ones((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="max_len"):
    model.sample(params, prompts, key(0), answer_len=4)


# ---- decoding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_greedy_equals_full_recompute(variant):
  model, params = model_and_params(tiny(**VARIANTS[variant]))
  fns = jitted(model)
  prompts, _ = random_prompts(1)
  greedy = fns["sample"](params, prompts, key(0), answer_len=ANSWER_LEN, greedy=True)
  reference = fns["reference"](params, prompts, answer_len=ANSWER_LEN)
  np.testing.assert_array_equal(greedy.tokens, reference)
  np.testing.assert_allclose(greedy.log_probs, fns["log_prob"](params, prompts, greedy.tokens),
                             atol=ATOL)


@pytest.mark.parametrize("variant", ["prefix-learned-tied", "prefix-rotary-rmsnorm"])
def test_sampled_log_probs_equal_teacher_forced(variant):
  model, params = model_and_params(tiny(**VARIANTS[variant]))
  fns = jitted(model)
  prompts, _ = random_prompts(2)
  temperature = 1.7
  out = fns["sample"](params, prompts, key(3), answer_len=ANSWER_LEN,
                      temperature=temperature)
  chex.assert_shape([out.tokens, out.log_probs], (prompts.shape[0], ANSWER_LEN))
  chex.assert_type([out.tokens, out.log_probs], [jnp.int32, jnp.float32])
  assert len(np.unique(np.asarray(out.tokens))) > 3  # really sampled, not constant
  teacher = fns["log_prob"](params, prompts, out.tokens, temperature=temperature)
  np.testing.assert_allclose(out.log_probs, teacher, atol=ATOL)
  assert (np.asarray(out.log_probs) < 0).all()


def test_sampling_follows_the_model_distribution():
  """Answer length 1 (no decode step): frequencies of sampled tokens match softmax(logits / T)."""
  model, params = model_and_params(tiny())
  fns = jitted(model)
  prompts = jnp.tile(random_prompts(4, batch=1)[0], (4096, 1))
  out = fns["sample"](params, prompts, key(5), answer_len=1, temperature=3.0)
  teacher = fns["log_prob"](params, prompts, out.tokens, temperature=3.0)
  np.testing.assert_allclose(out.log_probs, teacher, atol=ATOL)
  tokens, first = np.unique(np.asarray(out.tokens[:, 0]), return_index=True)
  probs = np.exp(np.asarray(teacher)[first, 0])
  assert len(tokens) > 3 and probs.sum() > 0.97  # the tokens never drawn are rare
  freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=VOCAB)[tokens] / 4096
  np.testing.assert_allclose(freq, probs, atol=0.03)  # > 3 standard deviations


# ---- masks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["causal-learned-untied", "prefix-learned-tied"])
def test_changing_a_later_token_never_changes_earlier_logits(variant):
  model, params = model_and_params(tiny(**VARIANTS[variant]))
  mask = model.config.mask
  # The edits and comparisons in numpy (as jax ops, each position's slice compiles on its own).
  tokens = np.asarray(jax.random.randint(key(0), (3, 12), 1, VOCAB))
  prompt_len = 5
  fns = jitted(model)
  base = np.asarray(fns["full_logits"](params, tokens, prompt_len=prompt_len))
  # In the answer region (and everywhere for "causal"), position j never affects positions < j.
  first = 1 if mask == "causal" else prompt_len
  for j in range(first, 12):
    changed = tokens.copy()
    changed[:, j] = (tokens[:, j] % (VOCAB - 1)) + 1
    logits = np.asarray(fns["full_logits"](params, changed, prompt_len=prompt_len))
    np.testing.assert_array_equal(logits[:, :j], base[:, :j])
    assert np.abs(logits[:, j:] - base[:, j:]).max() > 1e-4  # and the change is visible later
  # Through the public API: answer token t only affects the predictions of tokens after t.
  prompts, answers = tokens[:, :prompt_len], tokens[:, prompt_len:]
  base_lp = np.asarray(fns["answer_logits"](params, prompts, answers))
  for t in range(answers.shape[1]):
    changed = answers.copy()
    changed[:, t] = (answers[:, t] % (VOCAB - 1)) + 1
    np.testing.assert_array_equal(np.asarray(fns["answer_logits"](params, prompts, changed))[:, :t + 1],
                                  base_lp[:, :t + 1])


def test_prefix_mask_is_bidirectional_over_the_prompt_only():
  tokens = jax.random.randint(key(1), (2, 10), 1, VOCAB)
  changed = tokens.at[:, 4].set((tokens[:, 4] % (VOCAB - 1)) + 1)  # a prompt token (prompt_len 5)
  for variant, moves_earlier in (("prefix-learned-tied", True), ("causal-learned-untied", False)):
    model, params = model_and_params(tiny(**VARIANTS[variant]))
    logits = jitted(model)["full_logits"]
    delta = np.abs(logits(params, changed, prompt_len=5) - logits(params, tokens, prompt_len=5))
    assert (delta[:, :4].max() > 1e-4) == moves_earlier


# ---- padding -----------------------------------------------------------------------------------
def test_padding_in_prompts_does_not_change_answers():
  """Rows of one batch have 0..5 pads; three more pads on every row change nothing."""
  model, params = model_and_params(tiny())
  fns = jitted(model)
  prompts, lengths = random_prompts(7)
  more = jnp.pad(prompts, ((0, 0), (3, 0)))
  out = fns["sample"](params, prompts, key(0), answer_len=ANSWER_LEN, greedy=True)
  out_more = fns["sample"](params, more, key(0), answer_len=ANSWER_LEN, greedy=True)
  np.testing.assert_array_equal(out_more.tokens, out.tokens)
  np.testing.assert_allclose(out_more.log_probs, out.log_probs, atol=ATOL)
  np.testing.assert_allclose(fns["log_prob"](params, more, out.tokens), out.log_probs, atol=ATOL)
  # The shortest prompt alone, with no padding at all.
  row = int(np.argmin(lengths))
  alone = prompts[row:row + 1, PROMPT_LEN - int(lengths[row]):]
  assert alone.shape[1] < PROMPT_LEN and (alone != 0).all()
  out_alone = fns["sample"](params, alone, key(0), answer_len=ANSWER_LEN, greedy=True)
  np.testing.assert_array_equal(out_alone.tokens[0], out.tokens[row])
  np.testing.assert_allclose(out_alone.log_probs[0], out.log_probs[row], atol=ATOL)


def test_explicit_prompt_lengths_hide_whatever_the_padding_holds():
  model, params = model_and_params(tiny())
  prompts, lengths = random_prompts(8)
  pad_region = jnp.arange(PROMPT_LEN)[None, :] < (PROMPT_LEN - lengths)[:, None]
  garbage = jnp.where(pad_region, (prompts + 5) % VOCAB, prompts)  # non-PAD tokens in the padding
  fns = jitted(model)
  inferred = fns["sample"](params, prompts, key(0), answer_len=ANSWER_LEN, greedy=True)
  explicit = fns["sample"](params, garbage, key(0), answer_len=ANSWER_LEN, greedy=True,
                           prompt_lengths=lengths)
  np.testing.assert_array_equal(explicit.tokens, inferred.tokens)
  np.testing.assert_allclose(explicit.log_probs, inferred.log_probs, atol=ATOL)
  np.testing.assert_allclose(
      fns["log_prob"](params, garbage, inferred.tokens, prompt_lengths=lengths),
      inferred.log_probs, atol=ATOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_embedding_path_equals_the_token_path(variant):
  """The prompts as input embeddings (``embed``) give the token path's logits exactly; the
  embeddings at padding positions are never seen, a real position's are."""
  model, params = model_and_params(tiny(**VARIANTS[variant]))
  prompts, lengths = random_prompts(9)
  answers = jax.random.randint(key(3), (prompts.shape[0], ANSWER_LEN), 1, VOCAB)
  from_embeddings = jax.jit(model.answer_logits_from_embeddings)
  embeddings = jax.jit(model.embed)(params, prompts)
  chex.assert_shape(embeddings, prompts.shape + (model.config.d_model,))
  expected = jitted(model)["answer_logits"](params, prompts, answers, prompt_lengths=lengths)
  np.testing.assert_array_equal(
      from_embeddings(params, embeddings, answers, prompt_lengths=lengths), expected)
  pad_region = jnp.arange(PROMPT_LEN)[None, :] < (PROMPT_LEN - lengths)[:, None]
  noise = jax.random.normal(key(4), embeddings.shape)
  in_padding = from_embeddings(params, embeddings + noise * pad_region[..., None], answers,
                               prompt_lengths=lengths)
  np.testing.assert_allclose(in_padding, expected, atol=ATOL)
  moved = from_embeddings(params, embeddings.at[:, -1].add(noise[:, -1]), answers,
                          prompt_lengths=lengths)
  assert np.abs(moved - expected).max(axis=(1, 2)).min() > 1e-3


def test_leading_pad_counts_only_the_leading_run():
  prompts = jnp.asarray([[0, 0, 5, 0, 6], [3, 0, 0, 4, 0], [0, 0, 0, 0, 7]], jnp.int32)
  np.testing.assert_array_equal(transformer.leading_pad(prompts), [2, 0, 4])
  np.testing.assert_array_equal(transformer.leading_pad(prompts + 3, pad_id=3), [2, 0, 4])


def test_pad_id_comes_from_the_config():
  """models never import tasks: the default pad id equals the tasks' PAD, and a model built with
  another pad id treats exactly the leading run of that token as padding."""
  assert ModelConfig(vocab_size=VOCAB, num_layers=1, d_model=8, num_heads=1, d_ff=8,
                     max_len=8).pad_id == tasks.PAD
  model, params = model_and_params(tiny())
  other = models.LanguageModel(tiny(pad_id=VOCAB - 1))  # same shapes: the same params fit
  prompts, _ = random_prompts(10)
  prompts = jnp.where(prompts == VOCAB - 1, 1, prompts)  # VOCAB - 1 appears only as padding below
  swapped = jnp.where(prompts == 0, VOCAB - 1, prompts)
  answers = jax.random.randint(key(2), (prompts.shape[0], ANSWER_LEN), 1, VOCAB)
  logits = jitted(model)["answer_logits"](params, prompts, answers)
  np.testing.assert_allclose(jitted(other)["answer_logits"](params, swapped, answers), logits,
                             atol=ATOL)
  # The default model reads those VOCAB - 1 tokens as real ones (rows 1.. have padding).
  assert np.abs(jitted(model)["answer_logits"](params, swapped, answers) - logits)[1:].max() > 1e-4


def test_answer_mask_zeroes_masked_positions():
  model, params = model_and_params(tiny())
  prompts, _ = random_prompts(9)
  answers = jax.random.randint(key(0), (prompts.shape[0], ANSWER_LEN), 1, VOCAB)
  mask = jnp.arange(ANSWER_LEN)[None, :] < jnp.asarray([1, 2, 3, 4, 4, 0])[:, None]
  log_prob = jitted(model)["log_prob"]
  full = log_prob(params, prompts, answers)
  masked = log_prob(params, prompts, answers, answer_mask=mask)
  np.testing.assert_array_equal(masked, jnp.where(mask, full, 0.0))
  assert (np.asarray(full) < 0).all()


# ---- learning ----------------------------------------------------------------------------------
def test_tiny_model_overfits_a_fixed_question_answer_set():
  model, params = model_and_params(tiny(), seed=1)
  rng = np.random.default_rng(0)
  prompts = jnp.asarray(rng.integers(1, VOCAB, size=(6, PROMPT_LEN)), jnp.int32)
  answers = jnp.asarray(rng.integers(1, VOCAB, size=(6, ANSWER_LEN)), jnp.int32)
  optimizer = optax.adam(1e-2)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(
          lambda p: -model.log_prob(p, prompts, answers).sum(axis=1).mean())(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None, length=150)
    return params, losses

  params, losses = train(params)
  assert losses[-1] < 0.05 * losses[0]
  out = jitted(model)["sample"](params, prompts, key(0), answer_len=ANSWER_LEN,
                                greedy=True)
  np.testing.assert_array_equal(out.tokens, answers)  # 100% greedy accuracy


# ---- transformations and dtypes ----------------------------------------------------------------
def test_jit_and_vmap():
  """vmap over prompt groups (sampling and greedy share one compile: greedy may be traced) and
  over an ensemble of parameters; results match the unbatched jitted calls."""
  model, params = model_and_params(tiny())
  fns = jitted(model)
  prompts, _ = random_prompts(10)
  groups = jnp.stack([prompts, jnp.roll(prompts, 1, axis=0)])  # [G, B, Lp]
  keys = jax.random.split(key(0), 2)
  sample = jax.jit(jax.vmap(
      lambda p, prompts, rng, greedy: model.sample(p, prompts, rng, answer_len=ANSWER_LEN,
                                                   greedy=greedy), in_axes=(None, 0, 0, None)))
  drawn, greedy = sample(params, groups, keys, False), sample(params, groups, keys, True)
  chex.assert_shape([drawn.tokens, greedy.log_probs], (2, prompts.shape[0], ANSWER_LEN))
  other = model_and_params(model.config, seed=1)[1]
  ensemble = jax.tree.map(lambda *x: jnp.stack(x), params, other)  # member g scores group g
  log_prob = jax.jit(jax.vmap(model.log_prob))
  np.testing.assert_allclose(log_prob(ensemble, groups, drawn.tokens)[0], drawn.log_probs[0],
                             atol=ATOL)
  np.testing.assert_allclose(log_prob(ensemble, groups, greedy.tokens)[1],
                             fns["log_prob"](other, groups[1], greedy.tokens[1]), atol=ATOL)
  for g in range(2):
    single = fns["sample"](params, groups[g], keys[g], answer_len=ANSWER_LEN, greedy=True)
    np.testing.assert_array_equal(greedy.tokens[g], single.tokens)
    np.testing.assert_allclose(greedy.log_probs[g], single.log_probs, atol=ATOL)


def test_bfloat16_compute_runs_with_float32_params():
  model, params = model_and_params(tiny(dtype="bfloat16", positions="rotary"))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  prompts, _ = random_prompts(11)
  fns = jitted(model)
  out = fns["sample"](params, prompts, key(0), answer_len=ANSWER_LEN)
  chex.assert_type([out.tokens, out.log_probs], [jnp.int32, jnp.float32])
  teacher = fns["log_prob"](params, prompts, out.tokens)
  chex.assert_tree_all_finite([out.log_probs, teacher])
  np.testing.assert_allclose(out.log_probs, teacher, atol=0.1)  # bfloat16: ~3 significant digits
  prefill = functools.partial(model.prefill, answer_len=ANSWER_LEN)
  _, cache = jax.eval_shape(prefill, params, prompts)
  assert cache.layers[0][0].dtype == jnp.bfloat16
  chex.assert_shape(cache.layers[0][0], (prompts.shape[0], PROMPT_LEN + ANSWER_LEN - 1, 2, 16))


def test_dropout_only_with_a_dropout_key():
  model, params = model_and_params(tiny(dropout=0.3))
  prompts, _ = random_prompts(12)
  answers = jnp.ones((prompts.shape[0], ANSWER_LEN), jnp.int32)
  log_prob = jitted(model)["log_prob"]
  plain = log_prob(params, prompts, answers)
  np.testing.assert_array_equal(plain, log_prob(params, prompts, answers))
  dropped = log_prob(params, prompts, answers, dropout_rng=key(0))
  assert np.abs(dropped - plain).max() > 1e-3


def test_block_outputs_can_be_captured():
  model, params = model_and_params(tiny())
  tokens = jnp.ones((2, 5), jnp.int32)  # shapes only: traced abstractly
  index, pad = jnp.arange(5), jnp.zeros(2, jnp.int32)
  _, state = jax.eval_shape(functools.partial(model.module.apply, mutable=["intermediates"]),
                            {"params": params}, tokens, transformer.position_ids(index, pad),
                            transformer.attention_mask(index, index, pad))
  residuals = state["intermediates"]
  assert sorted(residuals) == ["block_0", "block_1"]
  chex.assert_shape(residuals["block_1"]["residual"][0], (2, 5, 32))


# ---- sharding annotations ------------------------------------------------------------------------
def all_axis_names(specs):
  return jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_parameter_has_logical_axes(variant):
  model = models.LanguageModel(tiny(**VARIANTS[variant]))
  specs, shapes = model.logical_axes(), jax.eval_shape(model.init, key(0))
  chex.assert_trees_all_equal_structs(
      specs, jax.tree.map(lambda _: jax.sharding.PartitionSpec(), shapes))
  for spec, shape in zip(all_axis_names(specs), jax.tree.leaves(shapes)):
    assert len(spec) == len(shape.shape) and all(isinstance(n, str) for n in spec), spec


def test_judges_have_logical_axes():
  judge = models.TranscriptJudge(tiny(), num_classes=3)
  image = models.ImageJudge(features=(4, 8), hidden=16)
  for module, inputs in ((judge, (jnp.ones((1, 9), jnp.int32),)),
                         (image, (jnp.ones((1, 28, 28)), jnp.ones((1, 28, 28))))):
    specs = models.logical_axes(module, *inputs)
    shapes = jax.eval_shape(lambda r: models.init_params(module, r, *inputs), key(0))
    for spec, shape in zip(all_axis_names(specs), jax.tree.leaves(shapes)):
      assert len(spec) == len(shape.shape) and all(isinstance(n, str) for n in spec), spec


def test_params_created_sharded_on_a_mesh_give_the_same_answers():
  devices = np.asarray(jax.devices()[:8])
  assert devices.size == 8, "tests/conftest.py sets 8 simulated CPU devices"
  mesh = jax.sharding.Mesh(devices.reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  model = models.LanguageModel(tiny())
  shardings = nn.logical_to_mesh_sharding(model.logical_axes(), mesh,
                                          models.rules_for_mesh(mesh.axis_names))
  params = jax.jit(model.init, out_shardings=shardings)(key(0))
  up = params["block_0"]["mlp"]["up"]["kernel"]
  assert up.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert up.addressable_shards[0].data.shape == (16, 32)  # [32, 64] split 2 x 2
  prompts, _ = random_prompts(13, batch=8)
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  out = jax.jit(model.sample, static_argnames=("answer_len",))(
      params, jax.device_put(prompts, batch), key(1), answer_len=ANSWER_LEN, greedy=True)
  local = jitted(model)["sample"](model_and_params(tiny())[1], prompts, key(1),
                                  answer_len=ANSWER_LEN, greedy=True)
  np.testing.assert_array_equal(out.tokens, local.tokens)
  np.testing.assert_allclose(out.log_probs, local.log_probs, atol=ATOL)


def test_rules_for_mesh_drops_missing_axes():
  rules = dict(models.rules_for_mesh(("data",)))
  assert rules["batch"] == "data" and rules["embed"] is None and rules["vocab"] is None


# ---- judges ------------------------------------------------------------------------------------
def test_transcript_judge_learns_a_verdict_rule_and_ignores_padding():
  """J imitates a simple 'H': verdict = whether token 3 appears more often than token 4 among the
  valid tokens; the last two tokens are padding (invalid) and hold random junk."""
  judge = models.TranscriptJudge(tiny(num_layers=1), num_classes=2)
  tokens = jax.random.randint(key(0), (64, 10), 3, 5)
  valid = jnp.tile(jnp.arange(10) < 8, (64, 1))
  labels = ((tokens[:, :8] == 3).sum(1) > (tokens[:, :8] == 4).sum(1)).astype(jnp.int32)
  params = jax.jit(functools.partial(models.init_params, judge))(key(1), tokens, valid)
  apply = jax.jit(judge.apply)
  optimizer = optax.adam(1e-2)

  def loss_fn(p):
    logits = judge.apply({"params": p}, tokens, valid)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def train(params):
    def step(carry, _):
      params, opt_state = carry
      grads = jax.grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    return jax.lax.scan(step, (params, optimizer.init(params)), None, length=100)[0][0]

  params = train(params)
  logits = apply({"params": params}, tokens, valid)
  chex.assert_shape(logits, (64, 2))
  chex.assert_type(logits, jnp.float32)
  assert (logits.argmax(-1) == labels).all()
  junk = tokens.at[:, 8:].set(jax.random.randint(key(2), (64, 2), 1, VOCAB))
  np.testing.assert_allclose(apply({"params": params}, junk, valid), logits, atol=ATOL)
  with pytest.raises(ValueError, match="max_len"):
    jax.eval_shape(judge.apply, {"params": params}, jnp.ones((1, 17), jnp.int32))


def test_image_judge_has_the_original_sizes():
  judge = models.ImageJudge()  # conv 32@5x5, pool, conv 64@5x5, pool, dense 1024, dropout, dense 10
  ones = jnp.ones((1, 28, 28))
  shapes = jax.eval_shape(lambda r: models.init_params(judge, r, ones, ones), key(0))
  assert models.count_params(shapes) == (5 * 5 * 2 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (
      7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)


def test_image_judge_sees_only_revealed_pixels():
  judge = models.ImageJudge(features=(8, 16), hidden=64)
  revealed = jax.random.bernoulli(key(0), 0.1, (2, 28, 28))
  values = jax.random.uniform(key(1), (2, 28, 28))
  # One program (eagerly, each of the judge's init ops compiles on its own; none is shared with
  # the transformers' eager inits).
  params = jax.jit(functools.partial(models.init_params, judge))(key(2), revealed, values)
  apply = jax.jit(judge.apply, static_argnames=("deterministic",))
  logits = apply({"params": params}, revealed, values)
  chex.assert_shape(logits, (2, 10))
  chex.assert_type(logits, jnp.float32)
  hidden_changed = jnp.where(revealed, values, 1.0 - values)
  np.testing.assert_allclose(apply({"params": params}, revealed, hidden_changed), logits, atol=ATOL)
  shown_changed = jnp.where(revealed, 1.0 - values, values)
  assert np.abs(apply({"params": params}, revealed, shown_changed) - logits).max() > 1e-4
  dropped = apply({"params": params}, revealed, values, deterministic=False,
                  rngs={"dropout": key(3)})
  assert np.abs(dropped - logits).max() > 1e-4


# ---- FLOPs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_param_count_matches_init(variant):
  model, params = model_and_params(tiny(**VARIANTS[variant]))
  assert models.count_params(params) == models.param_count(model.config)


def test_flops_per_token_matches_xla_cost_analysis():
  config = models.preset("tiny", VOCAB, 64, d_model=64, d_ff=256)
  model = models.LanguageModel(config)
  params = jax.eval_shape(model.init, key(0))
  tokens = jnp.ones((4, 64), jnp.int32)
  lowered = jax.jit(lambda p, t: full_logits(model, p, t, 0)).lower(params, tokens)
  cost = lowered.cost_analysis()  # of the unoptimised program: no compile needed
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  expected = tokens.size * models.flops_per_token(config, attended_len=64)
  assert 0.9 * expected <= cost["flops"] <= 1.3 * expected, (cost["flops"], expected)
  assert models.flops_per_token(config, 64, training=True) == 3 * models.flops_per_token(config, 64)
