"""KV-cache sampling vs full-recompute greedy decoding, measured in one run, printed as a ratio.

    python benchmarks/decode.py [--preset small] [--batch 64] [--prompt_len 32] [--answer_len 16]

Both decode the same greedy tokens (checked); the KV cache runs the prompt once and then one token
per step, full recompute reruns the whole sequence for every answer token. Also prints answer
tokens/s and the matmul FLOP rate implied by ``models.flops_per_token``. Takes about a minute for
the defaults on a 2-core CPU (mostly compilation).
"""

from __future__ import annotations

import common
import jax
import numpy as np
from absl import flags

from amp_debate import cli, models


def best_time(fn, *args, repeats: int = 3) -> float:
  """Fastest of ``repeats`` timed calls (after one untimed call that compiles)."""
  return min(common.call_times(fn, *args, repeats=repeats))


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_enum("preset", "small", sorted(models.PRESETS), "the model preset", **define)
  flags.DEFINE_integer("batch", 64, "prompts decoded at once", **define)
  flags.DEFINE_integer("prompt_len", 32, "prompt tokens", **define)
  flags.DEFINE_integer("answer_len", 16, "answer tokens", **define)
  flags.DEFINE_integer("vocab", 64, "vocabulary size", **define)
  return values


def execute(args: flags.FlagValues) -> None:
  """The benchmark the parsed flags ``args`` ask for (the module docstring): printed."""
  seq_len = args.prompt_len + args.answer_len - 1
  config = models.preset(args.preset, args.vocab, seq_len)
  model = models.LanguageModel(config)
  params = jax.jit(model.init)(jax.random.key(0))
  prompts = jax.random.randint(jax.random.key(1), (args.batch, args.prompt_len), 1, args.vocab)

  cached = jax.jit(lambda p, q: model.sample(p, q, jax.random.key(2), answer_len=args.answer_len,
                                             greedy=True).tokens)
  recompute = jax.jit(lambda p, q: model.greedy_full_recompute(p, q, answer_len=args.answer_len))
  np.testing.assert_array_equal(cached(params, prompts), recompute(params, prompts))
  t_cached, t_recompute = best_time(cached, params, prompts), best_time(recompute, params, prompts)

  tokens = args.batch * args.answer_len
  # Matmul FLOPs of the KV-cache path: a prefill over the prompt, then one step per further answer
  # token, each attending over the whole (masked) cache. (Counts the output head on every prompt
  # token, which prefill skips: high by vocab x d_model x 2 per prompt token.)
  flops = (args.batch * args.prompt_len * models.flops_per_token(config, seq_len) +
           args.batch * (args.answer_len - 1) * models.flops_per_token(config, seq_len))
  print(f"device: {jax.devices()[0].device_kind}; preset {args.preset} "
        f"({models.param_count(config):,} params, {config.dtype}); batch {args.batch}, "
        f"prompt {args.prompt_len}, answer {args.answer_len}")
  print(f"KV cache:        {t_cached * 1e3:8.1f} ms  {tokens / t_cached:10.0f} answer tokens/s  "
        f"{flops / t_cached / 1e9:7.2f} GFLOP/s")
  print(f"full recompute:  {t_recompute * 1e3:8.1f} ms  "
        f"{tokens / t_recompute:10.0f} answer tokens/s")
  print(f"speed-up of the KV cache: {t_recompute / t_cached:.2f}x")


def command_line(argv: list[str]) -> None:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  cli.command_line(define_flags, execute, argv, program="decode.py")


def main(argv) -> None:
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
