r"""Sparse-pixel MNIST debate: the no-debate baseline vs debate, for each debater (issue 14).

  python -m experiments.mnist_debate --workdir=workdir/mnist_debate   # trained judge (default)
  python -m experiments.mnist_debate --judge=template --results=experiments/results/mnist_debate_template

Trained judge (the default): for each k in ``--ks`` the ImageJudge of ``tools.mnist_judge`` (trained
on ``judge_train``, k random nonzero pixels; its eval accuracy from k random pixels is the no-debate
baseline) and the learned debater of ``tools.mnist_debater`` (self-play on ``debater_train`` against
that judge) are read from ``--workdir``/judge_k{k} and debater_k{k}, and trained there first when
missing (with ``--judge_steps`` and ``--debater_steps``). The debates are played on the first
``--num_images`` images of the ``eval`` split, for precommit off/on and the honest side moving first
or second, for the (honest, liar) pairs in ``PAIRS``: random reveal, greedy (judges every legal
pixel), mctx Gumbel MuZero with ``--simulations`` per move (the judge as its model; "mcts+prior":
with the learned policy's logits as its prior), and the learned policy (its most likely legal
pixel). Entries: the honest side's win rate per image (with
precommit: against all nine lies at once).

Template judge (``--judge=template``): per-class mean images of the first ``--template_images``
images of ``eval`` (a training-free, additive judge); debates on the next ``--num_images``; no
learned debater.

Also measures the search debater's simulations per second on this machine. Writes ``--results``.md
(table, command, data) and .json.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from amp_debate import cli
from amp_debate.data import mnist
from amp_debate.procedure import pixel_debate as pd
from amp_debate.tools import mnist_debater, mnist_judge

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mnist_debate")
PROGRAM = "python -m experiments.mnist_debate"
PAIRS = (("random", "random"), ("greedy", "random"), ("mcts", "random"), ("learned", "random"),
         ("mcts+prior", "random"), ("greedy", "greedy"), ("mcts", "mcts"), ("learned", "learned"),
         ("mcts+prior", "mcts+prior"), ("mcts", "greedy"), ("learned", "greedy"),
         ("mcts+prior", "greedy"))


def _players(game, names, simulations, max_candidates, learned):
  make = dict(random=lambda: pd.random_player(game),
              greedy=lambda: pd.greedy_player(game, max_candidates),
              mcts=lambda: pd.mcts_player(game, simulations),
              learned=lambda: pd.policy_player(game, mnist_debater.apply_fn(learned[0]),
                                               learned[1], sample=False),
              **{"mcts+prior": lambda: pd.mcts_player(game, simulations, prior_fn=pd.policy_prior(
                  game, mnist_debater.apply_fn(learned[0]), learned[1]))})
  return {name: make[name]() for name in set(names)}


def _win_rate(config, judge, honest, liar, images, labels, seed, **kw):
  game = pd.PixelDebate(config, judge)
  players = _players(game, (honest, liar), **kw)
  fn = jax.jit(lambda i, l, r: pd.debate(game, players[honest], players[liar], i, l, r).honest_wins)
  return float(fn(images, labels, jax.random.key(seed)).mean())


def _simulations_per_second(config, judge, images, labels, simulations):
  """Batched search speed: B * simulations / seconds of one (compiled) move search at the start."""
  game = pd.PixelDebate(config, judge)
  state = game.init(None, (images, jnp.stack([labels, (labels + 1) % 10], axis=1)))
  act = jax.jit(pd.mcts_player(game, simulations))
  act(state, jax.random.key(0)).block_until_ready()
  start, reps = time.time(), 3
  for r in range(reps):
    act(state, jax.random.key(r)).block_until_ready()
  return images.shape[0] * simulations * reps / (time.time() - start)


def _trained(args, k):
  """(judge_logits, judge record, (policy, params), debater record), training what is missing."""
  judge_dir = os.path.join(args.workdir, f"judge_k{k}")
  if not os.path.exists(os.path.join(judge_dir, mnist_judge.RECORD_FILE)):
    print(f"training the k={k} judge in {judge_dir}", flush=True)
    mnist_judge.run(k=k, steps=args.judge_steps, workdir=judge_dir, seed=args.seed)
  judge, judge_params, judge_record = mnist_judge.load_judge(judge_dir)
  debater_dir = os.path.join(args.workdir, f"debater_k{k}")
  if not os.path.exists(os.path.join(debater_dir, mnist_debater.RECORD_FILE)):
    print(f"training the k={k} debater in {debater_dir}", flush=True)
    mnist_debater.run(judge_dir=judge_dir, workdir=debater_dir, steps=args.debater_steps,
                      seed=args.seed, learning_rate=args.debater_learning_rate)
  policy, policy_params, debater_record = mnist_debater.load_debater(debater_dir)
  return (mnist_debater.judge_fn(judge, judge_params), judge_record, (policy, policy_params),
          debater_record)


# The flags, in the order the result's "args" record them.
FLAG_NAMES = ("judge", "workdir", "num_images", "template_images", "ks", "simulations",
              "judge_steps", "debater_steps", "debater_learning_rate", "seed", "results")


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_enum("judge", "trained", ["trained", "template"],
                    "the judge: a trained ImageJudge or per-class mean images", **define)
  cli.define_study_flags(values, workdir="workdir/mnist_debate", results=RESULTS,
                         help={"workdir": "where the judges and debaters are read or trained"})
  flags.DEFINE_integer("num_images", 100, "debated eval images", **define)
  flags.DEFINE_integer("template_images", 1000, "eval images of the template judge's means",
                       **define)
  flags.DEFINE_string("ks", "4,6", "comma-separated pixels revealed per debate", **define)
  flags.DEFINE_integer("simulations", 16, "MCTS simulations per move", **define)
  flags.DEFINE_integer("judge_steps", 2000, "training steps of a missing judge", **define)
  flags.DEFINE_integer("debater_steps", 1500, "training steps of a missing debater", **define)
  flags.DEFINE_float("debater_learning_rate", 3e-3, "a missing debater's learning rate", **define)
  flags.DEFINE_integer("seed", 0, "seed of the judges, debaters and debates", **define)
  return values


def execute(args: flags.FlagValues, command: str) -> dict:
  """The study the parsed flags ``args`` ask for (the module docstring); returns its result.
  ``command`` is the command line the table records."""
  trained = args.judge == "trained"
  pairs = PAIRS if trained else tuple(
      p for p in PAIRS if not {"learned", "mcts+prior"} & set(p))

  x, y = mnist.load("eval")
  x = x.astype(np.float32) / 255.0
  first = 0 if trained else args.template_images
  images = jnp.asarray(x[first:first + args.num_images])
  labels = jnp.asarray(y[first:first + args.num_images])
  max_candidates = int((images != 0).sum(axis=(1, 2)).max())  # exact greedy (see greedy_player)
  data = mnist.describe("eval") + f", images [{first}, {first + args.num_images}) of the split"

  rows, per_k, start = [], {}, time.time()
  for k in (int(v) for v in args.ks.split(",")):
    learned = None
    if trained:
      judge, judge_record, learned, debater_record = _trained(args, k)
      per_k[k] = dict(no_debate_baseline=judge_record["eval_accuracy"],
                      judge=dict((f, judge_record[f]) for f in (
                          "steps", "batch_size", "seed", "train_data", "eval_data",
                          "eval_draws", "judge")),
                      debater=dict((f, debater_record[f]) for f in (
                          "steps", "batch_size", "seed", "learning_rate", "entropy_coef",
                          "train_data", "policy")),
                      debater_curve=debater_record["curve"])
    else:
      t = args.template_images
      means = jnp.stack([x[:t][y[:t] == c].mean(axis=0) for c in range(10)])
      judge = pd.template_judge(means)
    full = judge(jnp.ones(images.shape, bool), images)
    per_k.setdefault(k, {})["full_image_accuracy"] = float((full.argmax(1) == labels).mean())
    for precommit in (False, True):
      for honest_first in (True, False):
        config = pd.PixelDebateConfig(k=k, precommit=precommit, honest_first=honest_first)
        for honest, liar in pairs:
          rate = _win_rate(config, judge, honest, liar, images, labels, args.seed,
                           simulations=args.simulations, max_candidates=max_candidates,
                           learned=learned)
          rows.append(dict(k=k, precommit=precommit, honest_first=honest_first, honest=honest,
                           liar=liar, honest_win_rate=rate))
          print(rows[-1], f"{time.time() - start:.0f}s", flush=True)
    config = pd.PixelDebateConfig(k=k)
    per_k[k]["mcts_simulations_per_second"] = {
        s: _simulations_per_second(config, judge, images[:64], labels[:64], s) for s in (16, 64)}
    print(f"k={k} MCTS simulations/s:", per_k[k]["mcts_simulations_per_second"], flush=True)

  result = dict(command=command.strip(), args={name: args[name].value for name in FLAG_NAMES},
                data=data, per_k=per_k, rows=rows,
                seconds=time.time() - start, devices=str(jax.devices()))
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  with open(args.results + ".json", "w") as f:
    json.dump(result, f, indent=1)
  png = plot(result, pairs, args.results + ".png")
  text = _markdown(result, args, pairs)
  if png:
    text += f"\n![honest win rates]({os.path.basename(png)})\n"
  with open(args.results + ".md", "w") as f:
    f.write(text)
  print(text)
  return result


# command_line(argv) in this process, and absl's main.
command_line, main = cli.recorded(define_flags, execute, PROGRAM)


def plot(result, pairs, out_png: str) -> str | None:
  """A PNG: per k, the no-debate baseline and the honest win rate of each self-play and vs-random
  pair (no precommit, the two move orders averaged); and, trained judge, the learned debater's
  evaluation curve. None without matplotlib."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  per_k = result["per_k"]
  curves = [k for k in per_k if "debater_curve" in per_k[k]]
  fig = Figure(figsize=(6 * len(per_k) + 5 * bool(curves), 4), layout="constrained")
  axes = fig.subplots(1, len(per_k) + bool(curves), squeeze=False)[0]
  for ax, k in zip(axes, per_k):
    names, rates = [], []
    for honest, liar in pairs:
      for precommit, label in ((False, ""), (True, " (precommit)")):
        got = [r["honest_win_rate"] for r in result["rows"] if r["k"] == k
               and r["precommit"] == precommit and (r["honest"], r["liar"]) == (honest, liar)]
        names.append(f"{honest} vs {liar}{label}")
        rates.append(sum(got) / len(got))
    colours = ["tab:blue" if "precommit" not in n else "tab:orange" for n in names]
    ax.barh(range(len(names)), rates, color=colours)
    ax.set_yticks(range(len(names)), names, fontsize="small")
    ax.invert_yaxis()
    if "no_debate_baseline" in per_k[k]:
      ax.axvline(per_k[k]["no_debate_baseline"], color="k", linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_title(f"k = {k}: honest win rate (both move orders)\n"
                 "orange: precommit; dashed: no-debate baseline", fontsize="medium")
  if curves:
    ax = axes[-1]
    for k in curves:
      curve = per_k[k]["debater_curve"]
      steps = [p["step"] for p in curve]
      ax.plot(steps, [p["honest_win/as_honest_vs_random"] for p in curve],
              label=f"k={k}: learned honest vs random liar")
      ax.plot(steps, [p["honest_win/as_liar_vs_random"] for p in curve], linestyle="--",
              label=f"k={k}: random honest vs learned liar")
    ax.set_ylim(0, 1)
    ax.set_xlabel("self-play training step")
    ax.set_title("learned debater: honest win rate on eval")
    ax.legend(fontsize="small")
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png)
  return out_png


def _markdown(result, args, pairs):
  trained = args.judge == "trained"
  title = "trained ImageJudge, search and learned debaters" if trained else (
      "template judge, search debaters")
  lines = [f"# Sparse-pixel MNIST debate: {title}", "",
           f"Command: `{result['command']}` ({result['seconds']:.0f} s on {result['devices']}; "
           f"2 shared CPU cores).", "", f"Debates on: {result['data']}. Nonzero pixels only, seed "
           f"{args.seed}; MCTS = mctx Gumbel MuZero, {args.simulations} simulations per move, the "
           "judge as its model" + (" (mcts+prior: with the learned debater's logits as the search "
                                   "prior)" if trained else "") +
           "; greedy judges every legal pixel" + ("; learned = the self-play policy's most likely "
                                                  "legal pixel" if trained else "") + ". Entries: the honest side's win rate per image (precommit: "
           "it must beat all nine lies).", ""]
  if trained:
    lines += ["| k | no-debate baseline (judge, k random pixels) | judge on every pixel (outside "
              "its training distribution) | "
              "judge trained on | debater trained on |", "|---|---|---|---|---|"]
    for k, info in result["per_k"].items():
      lines.append(f"| {k} | {info['no_debate_baseline']:.1%} | "
                   f"{info['full_image_accuracy']:.1%} | {info['judge']['train_data']}, "
                   f"{info['judge']['steps']} steps x {info['judge']['batch_size']} | "
                   f"{info['debater']['train_data']}, {info['debater']['steps']} steps x "
                   f"{info['debater']['batch_size']} |")
    lines.append("")
  else:
    lines += [f"Judge: per-class mean images of eval images [0, {args.template_images}); logits = "
              "-sum over revealed pixels of (value - mean)^2. On every pixel it is right on " +
              ", ".join(f"{v['full_image_accuracy']:.0%} (k={k} run)"
                        for k, v in result["per_k"].items()) + " of the debated images.", ""]
  names = [f"{h} vs {l}" for h, l in pairs]
  lines.append("| k | precommit | honest moves | " + " | ".join(names) + " |")
  lines.append("|---|---|---|" + "---|" * len(names))
  rows = result["rows"]
  for i in range(0, len(rows), len(pairs)):
    group = rows[i:i + len(pairs)]
    r = group[0]
    lines.append(f"| {r['k']} | {'yes' if r['precommit'] else 'no'} | "
                 f"{'first' if r['honest_first'] else 'second'} | "
                 + " | ".join(f"{g['honest_win_rate']:.2f}" for g in group) + " |")
  lines += ["", "MCTS simulations per second (a batch of 64 searches at the first move, 784 "
            "actions):"]
  for k, info in result["per_k"].items():
    lines.append(f"- k={k}: " + ", ".join(f"{s} sims/move: {v:,.0f}/s" for s, v in
                                          info["mcts_simulations_per_second"].items()))
  lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.run(define_flags, main)
