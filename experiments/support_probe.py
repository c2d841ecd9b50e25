r"""Issue 28 diagnostic: what decides a pure-debate game at level 1? Loads a run's checkpoint and
plays one batch of its own training games per level with M_target = M (one training step's
rollout, the update discarded), then reports, per level: how the games ended, how often the
decided games were won by a true claim, how true M's directly answered root supports are
(``credit.support_truth``, ground truth: evaluation only), whether each side's support ends on
its own claim or on M's own greedy answer to the root, and M's greedy accuracy on those
questions.

  python -m experiments.support_probe --workdir=workdir/sweep_study/selfplay_from_leaf/<run> \
      [--batches=8] [--out=experiments/results/support_probe.json]

Nothing here feeds training.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from amp_debate import cli
from amp_debate.procedure import credit, debate
from amp_debate.procedure.model_player import ModelDebater
from amp_debate.train import programs, restore


def probe(workdir: str, batches: int = 8, seed: int = 123) -> dict:
  """{level: {metric: mean over ``batches`` batches}} for the run at ``workdir`` (latest step)."""
  state, config, at_step = restore.load_state(workdir)
  task, model, _, step_config, _ = programs.build(config)
  m = ModelDebater(model=model, params=state.params, task=task,
                   temperature=step_config.temperature)

  @jax.jit
  def play(rng, level):
    sample_rng, debate_rng = jax.random.split(rng)
    batch = task.sample(sample_rng, step_config.batch_size, difficulty=level)
    game, transcript = debate.rollout(task, m, m, batch.questions, debate_rng, step_config.debate)
    decided = game.winner != debate.DRAW
    winner_claim = jnp.take_along_axis(transcript.claims[:, 0], jnp.minimum(game.winner, 1)[
        :, None, None], axis=1)[:, 0]
    # Accuracy of M's greedy direct answers on the same questions.
    greedy = ModelDebater(model=model, params=state.params, task=task, greedy=True)
    accuracy = (greedy.answer(batch.questions, rng).tokens == batch.answers).all(-1).mean()
    true_claim = (transcript.claims[:, 0] == batch.answers[:, None]).all(-1)  # [B, 2]
    one_true = true_claim.sum(-1) == 1
    won_true = (winner_claim == batch.answers).all(-1) & decided
    reasons = {f"ended_by_{name}": (game.reason == i).mean()
               for i, name in enumerate(debate.REASONS) if name != "running"}
    # Among the games with exactly one true claim: how each ended.
    reasons_one_true = {f"one_true_ended_by_{name}": ((game.reason == i) & one_true).sum()
                        / jnp.maximum(one_true.sum(), 1)
                        for i, name in enumerate(debate.REASONS) if name != "running"}
    # Does each side's support end on its own claim, or on M's own (greedy) answer to the root?
    la = task.answer_len
    last_row = transcript.support_tokens[:, 0, :, -la:]  # [B, 2, La] the row that recombines
    made = transcript.support_sampled[:, 0] & transcript.support_made[:, 0]  # [B, 2]
    own = greedy.answer(batch.questions, rng).tokens[:, None]  # [B, 1, La]
    share = lambda hit, side: (hit[:, side] & made[:, side]).sum() / jnp.maximum(
        made[:, side].sum(), 1)
    ends_on_claim = (last_row == transcript.claims[:, 0]).all(-1)
    ends_on_belief = (last_row == own).all(-1)
    support_rows = {f"{name}_support_ends_on_{what}": share(hit, side)
                    for side, name in enumerate(("even", "odd"))
                    for what, hit in (("its_claim", ends_on_claim), ("m_greedy_answer",
                                                                     ends_on_belief))}
    claim_is_belief = {f"{name}_claim_is_m_greedy_answer": (
        (transcript.claims[:, 0, side] == own[:, 0]).all(-1)).mean()
                       for side, name in enumerate(("even", "odd"))}
    return {**reasons, **reasons_one_true, **support_rows, **claim_is_belief,
            "decided": decided.mean(), "accuracy_greedy": accuracy,
            "winner_true": won_true.sum() / jnp.maximum(decided.sum(), 1),
            "games_with_one_true_claim": one_true.mean(),
            "true_claim_wins_when_one_is_true": (won_true & one_true).sum() / jnp.maximum(
                one_true.sum(), 1),
            **{k.split("/", 1)[1]: v for k, v in credit.support_truth(task, transcript, per_row=True).items()}}

  out = {"workdir": workdir, "step": int(at_step), "batch_size": step_config.batch_size,
         "batches": batches, "levels": {}}
  for level in range(task.max_difficulty + 1):
    rows = [jax.device_get(play(jax.random.fold_in(jax.random.key(seed), i), level))
            for i in range(batches)]
    out["levels"][str(level)] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  return out


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_multi_string("workdir", None, "a run's directory (repeatable: one probe each)",
                            **define)
  flags.DEFINE_integer("batches", 8, "training batches played per level", **define)
  flags.DEFINE_string("out", "", "also write the JSON here", **define)
  flags.mark_flag_as_required("workdir", flag_values=values)
  return values


def execute(args: flags.FlagValues) -> list[dict]:
  """The probes of the runs the parsed flags ``args`` name, printed (JSON) and returned."""
  results = [probe(w, args.batches) for w in args.workdir]
  text = json.dumps(results, indent=1)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return results


def command_line(argv: list[str]) -> list[dict]:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="support_probe")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
