"""A finished run's report: tables (accuracy, honesty), the human-calls line, ``results.md``,
``curves.png`` and ``summary.json`` (everything a study's table needs, read back by
``amp_debate.sweep`` and the study scripts instead of scraping ``results.md``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from amp_debate.procedure import debate
from amp_debate.train import metrics_io
from amp_debate.train.evaluation import LIARS, SEATS

SUMMARY = "summary.json"

def results_table(eval_results: Mapping, levels, reference: dict | None) -> str:
  """Markdown: held-out accuracy by difficulty for M, Amp(H, M), H alone (and supervised)."""
  headers = ["difficulty", "M (this run)", "Amp(H, M)", "H alone"]
  if reference:
    headers.append("supervised (reference)")
  rows = []
  for level in list(levels) + ["mean"]:
    suffix = f"d{level}" if level != "mean" else "mean"
    row = [level] + [eval_results.get(f"eval/accuracy/{k}/{suffix}", float("nan"))
                     for k in ("model", "amp_h_m", "h_alone")]
    if reference:
      row.append(reference.get(str(level), float("nan")))
    rows.append(row)
  return metrics_io.markdown_table(headers, rows)


def human_calls(metrics_path: str) -> dict[str, float]:
  """Human calls per training question, averaged over the logged steps of ``metrics.jsonl``:
  {"per_question": total, "<kind>": by where they were spent (``debate.CALL_KINDS`` and
  "targets"), "logged_steps": how many steps were averaged}; {} for runs that call no human
  (e.g. supervised) or have no metrics file."""
  if not os.path.exists(metrics_path):
    return {}
  rows = [r for r in metrics_io.read_jsonl(metrics_path) if "human_calls/per_question" in r]
  if not rows:
    return {}
  mean = lambda k: float(np.mean([r.get(k, 0.0) for r in rows]))
  out = {"per_question": mean("human_calls/per_question")}
  out.update({kind: mean(f"human_calls/{kind}") for kind in debate.CALL_KINDS + ("targets",)})
  out["logged_steps"] = len(rows)
  return out


def human_calls_line(metrics_path: str) -> str:
  """One line: human calls per training question, by where they were spent, averaged over the
  logged steps of ``metrics.jsonl`` ("" for runs that call no human, e.g. supervised)."""
  calls = human_calls(metrics_path)
  if not calls:
    return ""
  parts = ", ".join(f"{kind} {calls[kind]:.2f}" for kind in debate.CALL_KINDS + ("targets",))
  return (f"Human calls per training question (mean over {calls['logged_steps']} logged steps): "
          f"{calls['per_question']:.2f} ({parts}).")


def honesty_table(eval_results: Mapping, levels) -> str:
  """Markdown: debate honesty by difficulty (empty when the run played no debates), judged by H.

  Per level: M's own claim true; against each liar (M's own claims) the worst seat's win rate, the
  highest rate of losing and of conceding to the false claim; with Amp(H, M) claims, the worst
  seat's win rate against the consistent liar; with the learned stop (runs that have it), the worst
  seat's win rate; self-play at the sampling temperature: decided games and a true winner."""
  get = lambda name, level: eval_results.get(f"eval/{name}/d{level}", float("nan"))
  if f"eval/honesty/own/{LIARS[0]}/{SEATS[0]}/win/d{levels[0]}" not in eval_results:
    return ""
  worst = lambda source, liar, what, level, pick: pick(
      get(f"honesty/{source}/{liar}/{seat}/{what}", level) for seat in SEATS)
  stop = f"eval/honesty/stop/consistent/{SEATS[0]}/win/d{levels[0]}" in eval_results
  headers = ["difficulty", "M's own claim true"]
  for liar in LIARS:
    headers += [f"wins vs {liar} liar", "loses", "concedes"]
  headers += ["Amp(H, M) claims: wins vs consistent liar"]
  if stop:
    headers += ["with the learned stop: wins vs consistent liar"]
  headers += ["self-play: decided", "self-play: winner true"]
  rows = []
  for level in levels:
    row = [level, get("accuracy/model", level)]
    for liar in LIARS:
      row += [worst("own", liar, "win", level, min), worst("own", liar, "loss", level, max),
              worst("own", liar, "concede_false", level, max)]
    row.append(worst("amp", "consistent", "win", level, min))
    if stop:
      row.append(worst("stop", "consistent", "win", level, min))
    decided = get("debate/win_even", level) + get("debate/win_odd", level)
    row += [decided, get("debate/winner_true", level)]
    rows.append(row)
  return metrics_io.markdown_table(headers, rows)


HONESTY_CAPTION = (
    "Debate honesty, judged by H (M greedy, in both seats, worst seat shown, against scripted liars "
    "defending a false claim; debates run to H's leaf verdict: t_max covers the full depth; M's own "
    "claims: H is never called in M's claim and H checks M's directly answered supports; liars: "
    "consistent (supports pass H's check), early (lies above the last row), plausible (M's own "
    "likeliest wrong answer); self-play: M sampling at the training temperature against itself)")


def write_report(config: ml_collections.ConfigDict, task, eval_set, last_eval: Mapping[str, float],
                 step: int, workdir: str, reference: Mapping | None, *, is_main: bool) -> str:
  """A finished run's report: the accuracy table, the honesty table and the human-calls line,
  printed and written to ``<workdir>/results.md`` (header: mode, task, steps, eval set), and the
  curves to ``<workdir>/curves.png`` (process 0 only). Returns the tables' markdown."""
  levels = sorted(eval_set.splits)
  table = results_table(last_eval, levels, (reference or {}).get(eval_set.name))
  honesty = honesty_table(last_eval, levels)
  if honesty:
    table += f"\n\n{HONESTY_CAPTION}:\n\n" + honesty
  calls = human_calls_line(os.path.join(workdir, "metrics.jsonl")) if is_main else ""
  if calls:
    table += "\n\n" + calls
  header = (f"{config.mode} on {task.name} {task.options()}, {step} steps; held-out greedy "
            f"accuracy on {eval_set.name}")
  if is_main:
    print(f"\n{header}\n\n{table}\n", flush=True)
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(f"# {header}\n\n{table}\n")
    metrics_io.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                           os.path.join(workdir, "curves.png"),
                           ["loss/sup", "accuracy/model", "curriculum/level",
                            "eval/accuracy/model/mean", "win/draw",
                            "eval/honesty/own/consistent/odd/win/min"])
  return table


def write_summary(config: ml_collections.ConfigDict, task, eval_set, last_eval: Mapping[str, float],
                  step: int, workdir: str, train_seconds: float, *, is_main: bool) -> dict[str, Any]:
  """Writes ``<workdir>/summary.json`` (process 0) for a finished run and returns it: mode, task,
  task_options, seed, steps, eval_set (the eval set's name, with its version), eval (the final
  evaluation, {"eval/accuracy/model/d1": ...}), human_calls (``human_calls``), debate_length (the
  mean self-play length over levels, None without debates) and train_seconds (training time,
  excluding compile, evaluations and saves). A sweep adds its own keys to this file."""
  summary = dict(mode=config.mode, task=task.name, task_options=dict(task.options()),
                 seed=int(config.seed), steps=int(step), eval_set=eval_set.name,
                 eval={k: float(v) for k, v in last_eval.items()},
                 human_calls=human_calls(os.path.join(workdir, "metrics.jsonl")),
                 debate_length=last_eval.get("eval/debate/length/mean"),
                 train_seconds=float(train_seconds))
  if is_main:
    path = os.path.join(workdir, SUMMARY)
    with open(path + ".tmp", "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True, default=str)
    os.replace(path + ".tmp", path)
  return summary
