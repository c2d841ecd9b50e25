r"""Sparse-pixel MNIST debate with search debaters and a training-free judge (issue 14, game part).

  python -m experiments.mnist_debate   # about 10 CPU minutes on 2 shared cores

The judge is ``procedure.pixel_debate.template_judge``: per-class mean images of the first
``--template_images`` images of the offline MNIST eval split, logits = -sum over revealed pixels of
(value - mean)^2 (a trained ImageJudge is not used here). The debates are played on the next
``--num_images`` images, for k in ``--ks``, precommit off/on, honest first/second, and the
(honest, liar) debater pairs in ``PAIRS`` (random reveal, greedy, mctx Gumbel MuZero with
``--simulations`` simulations per move); the table reports the honest win rate per image (with
precommit: against every wrong label at once). Also measures MCTS simulations per second on this
CPU. Writes ``--results``.md (table, command) and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.data import mnist
from amp_debate.procedure import pixel_debate as pd

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mnist_debate")
PAIRS = (("random", "random"), ("greedy", "random"), ("mcts", "random"), ("greedy", "greedy"),
         ("mcts", "mcts"), ("mcts", "greedy"))


def _players(game, simulations):
  return dict(random=pd.random_player(game), greedy=pd.greedy_player(game),
              mcts=pd.mcts_player(game, simulations))


def _win_rate(config, judge, honest, liar, images, labels, simulations, seed):
  game = pd.PixelDebate(config, judge)
  players = _players(game, simulations)
  fn = jax.jit(lambda i, l, r: pd.debate(game, players[honest], players[liar], i, l, r).honest_wins)
  return float(fn(images, labels, jax.random.key(seed)).mean())


def _simulations_per_second(judge, images, labels, simulations):
  """Batched search speed: B * simulations / seconds of one (compiled) move search at the start."""
  game = pd.PixelDebate(pd.PixelDebateConfig(), judge)
  state = game.init(None, (images, jnp.stack([labels, (labels + 1) % 10], axis=1)))
  act = jax.jit(pd.mcts_player(game, simulations))
  act(state, jax.random.key(0)).block_until_ready()
  start, reps = time.time(), 3
  for r in range(reps):
    act(state, jax.random.key(r)).block_until_ready()
  return images.shape[0] * simulations * reps / (time.time() - start)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=100)
  parser.add_argument("--template_images", type=int, default=1000)
  parser.add_argument("--ks", default="4,6")
  parser.add_argument("--simulations", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--results", default=RESULTS)
  args = parser.parse_args(argv)

  x, y = mnist.load("eval")
  x = x.astype(np.float32) / 255.0
  t = args.template_images
  means = jnp.stack([x[:t][y[:t] == c].mean(axis=0) for c in range(10)])
  judge = pd.template_judge(means)
  images = jnp.asarray(x[t:t + args.num_images])
  labels = jnp.asarray(y[t:t + args.num_images])
  full = judge(jnp.ones(images.shape, bool), images)
  full_accuracy = float((full.argmax(axis=1) == labels).mean())

  rows, start = [], time.time()
  for k in (int(v) for v in args.ks.split(",")):
    for precommit in (False, True):
      for honest_first in (True, False):
        config = pd.PixelDebateConfig(k=k, precommit=precommit, honest_first=honest_first)
        for honest, liar in PAIRS:
          rate = _win_rate(config, judge, honest, liar, images, labels, args.simulations,
                           args.seed)
          rows.append(dict(k=k, precommit=precommit, honest_first=honest_first, honest=honest,
                           liar=liar, honest_win_rate=rate))
          print(rows[-1], f"{time.time() - start:.0f}s", flush=True)
  speed = {s: _simulations_per_second(judge, images[:64], labels[:64], s) for s in (16, 64)}
  print("MCTS simulations/s:", speed, flush=True)

  command = "python -m experiments.mnist_debate " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])
  result = dict(command=command.strip(), args=vars(args), full_image_accuracy=full_accuracy,
                mcts_simulations_per_second=speed, rows=rows, seconds=time.time() - start,
                devices=str(jax.devices()))
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".json", "w") as f:
    json.dump(result, f, indent=1)
  lines = [
      "# Sparse-pixel MNIST debate: search debaters, template judge", "",
      f"Command: `{result['command']}` ({result['seconds']:.0f} s on {result['devices']}).", "",
      f"Judge: per-class mean images of MNIST eval images [0, {t}), logits = -sum over revealed "
      f"pixels of (value - mean)^2; it classifies {full_accuracy:.1%} of the debated images right "
      f"when it sees every pixel. Debates on eval images [{t}, {t + args.num_images}), nonzero "
      f"pixels only, seed {args.seed}; MCTS = mctx Gumbel MuZero, {args.simulations} simulations "
      "per move. Entries: honest win rate (precommit: the honest side must beat all nine lies).",
      ""]
  pairs = [f"{h} vs {l}" for h, l in PAIRS]
  lines.append("| k | precommit | honest moves | " + " | ".join(pairs) + " |")
  lines.append("|---|---|---|" + "---|" * len(pairs))
  for i in range(0, len(rows), len(PAIRS)):
    group = rows[i:i + len(PAIRS)]
    r = group[0]
    lines.append(f"| {r['k']} | {'yes' if r['precommit'] else 'no'} | "
                 f"{'first' if r['honest_first'] else 'second'} | "
                 + " | ".join(f"{g['honest_win_rate']:.2f}" for g in group) + " |")
  lines += ["", "MCTS simulations per second (batch of 64 searches at the first move, 784 actions):"
            + ", ".join(f" {s} sims/move: {v:,.0f}" for s, v in speed.items()), ""]
  with open(args.results + ".md", "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
