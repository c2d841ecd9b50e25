r"""Runs the jitted train step in a loop on CPU and prints M's accuracy against H alone.

  python experiments/step_loop.py --steps=400 --task=permutation --option=n=6 --option=max_exponent=4

Hybrid mode (weighted: λ_rl = λ_sup = λ_cat = 1), a 2-layer d=64 model, batch 64, debates of at most
6 arguments, adaptive curriculum (raise at 0.9 agreement with Amp′(H, M_target)). Accuracy is measured
against ground truth on each step's training batch (evaluation only; it never drives the update) and
compared with H alone on the same questions. About 4 minutes for 400 steps on 2 CPU cores. The trainer
proper (configs, checkpoints, eval on the TFDS split) is issue 5.
"""

from __future__ import annotations

import argparse
import time

import jax
import optax

from amp_debate import models, tasks
from amp_debate.procedure import combine, debate, model_player
from amp_debate.tasks.__main__ import parse_options
from amp_debate.train import step as step_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task", default="permutation")
  parser.add_argument("--option", action="append", default=None,
                      help="task option key=value (repeatable); default for permutation: n=6, "
                           "max_exponent=4")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--every", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  options = args.option
  if options is None:
    options = ["n=6", "max_exponent=4"] if args.task == "permutation" else []
  task = tasks.get(args.task, **parse_options(options))
  config = models.preset("tiny", task.vocab_size, model_player.required_max_len(task),
                         num_layers=2, d_model=64, num_heads=4, d_ff=256)
  model = models.LanguageModel(config)
  tx = combine.chain(combine.make("weighted", weights={"rl": 1.0, "sup": 1.0, "cat": 1.0}),
                     clip_norm=1.0, optimizer=optax.adam(3e-3))
  step_config = step_lib.StepConfig(
      batch_size=64, debate=debate.DebateConfig(t_max=6, learned_stop=False),
      curriculum="adaptive", curriculum_min_steps=5)
  state = step_lib.init_state(task, model, tx, step_config, jax.random.key(args.seed))
  train_step = step_lib.make_train_step(task, model, tx, step_config)

  print(f"task {task.name} {task.options()}, {args.steps} steps")
  print("| step | level | M accuracy (window) | H alone (window) | agreement | loss/sup | "
        "even/odd/draw wins | mean length |")
  print("|---|---|---|---|---|---|---|---|")
  start, window = time.time(), []
  for i in range(args.steps):
    state, m = train_step(state, jax.random.fold_in(jax.random.key(args.seed), i + 1))
    window.append((float(m["accuracy/model"]), float(m["accuracy/h_alone"])))
    if (i + 1) % args.every == 0:
      acc = sum(a for a, _ in window) / len(window)
      alone = sum(h for _, h in window) / len(window)
      print(f"| {i + 1} | {int(m['curriculum/level'])} | {acc:.2f} | {alone:.2f} | "
            f"{float(m['curriculum/agreement']):.2f} | {float(m['loss/sup']):.2f} | "
            f"{float(m['win/even']):.2f}/{float(m['win/odd']):.2f}/{float(m['win/draw']):.2f} | "
            f"{float(m['debate/mean_length']):.1f} |", flush=True)
      window = []
  print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
