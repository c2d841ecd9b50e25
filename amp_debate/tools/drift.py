r"""Which concepts move in fine-tuning: the command line comparing two checkpoints of M.

  python -m amp_debate.tools.drift --a=workdir/amp --b=workdir/hybrid:600 \
      [--out=DIR] [--examples=512] [--seed=0] [--pool=mean]

``--a`` and ``--b`` name checkpoints as ``<workdir>[:step]`` (default: the latest step) or as a
step's directory ``<workdir>/checkpoints/<step>``. Both must be of one task (same task options)
and one parameter shape. Per top-level module of M the report gives the relative parameter change
and the linear CKA of the module's output representation, by input kind (task and protocol
questions); the measures are ``amp_debate.safety.drift``'s (pure), whose docstring defines them.

Writes ``drift.md`` (the table), ``drift.json`` and ``drift.png`` (matplotlib: relative change and
CKA per layer) into ``--out`` (default ``<b's workdir>/drift``) and prints the table. Bad inputs (a
missing workdir or step, checkpoints of different tasks or shapes) end with one line
``drift: ...`` and exit code 1.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags, logging

from amp_debate import cli
from amp_debate.safety.drift import (  # noqa: F401 (KINDS, POOLS re-exported for the studies)
    KINDS, POOLS, DriftError, check_comparable, compare)
from amp_debate.train import checkpoint as checkpoint_lib
from amp_debate.train import config_lib, restore


# ---- reports ----------------------------------------------------------------------------------
def _cell(value: float | None) -> str:
  if value is None:
    return "–"
  return "nan" if np.isnan(value) else f"{value:.4f}"


def markdown_table(report: Mapping[str, Any]) -> str:
  """The per-layer table: relative change and CKA for each input kind, then the total."""
  kinds = list(KINDS)
  header = ["module", "‖θ_b − θ_a‖ / ‖θ_a‖"] + [
      f"CKA, {kind} ({', '.join(KINDS[kind])})" for kind in kinds]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for layer in report["layers"]:
    lines.append("| " + " | ".join([layer["name"], _cell(layer["relative_change"])] +
                                   [_cell(layer["cka"][k]) for k in kinds]) + " |")
  lines.append("| " + " | ".join(["all parameters", _cell(report["total_relative_change"])] +
                                 [""] * len(kinds)) + " |")
  return "\n".join(lines)


def header_table(report: Mapping[str, Any]) -> str:
  """CKA per layer for each protocol header separately (examples / 4 prompts each)."""
  by_header = report["cka_by_header"].get("protocol", {})
  if not by_header:
    return ""
  names = list(by_header)
  layers = list(next(iter(by_header.values())))
  lines = ["| module | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
  for layer in layers:
    lines.append(f"| {layer} | " + " | ".join(_cell(by_header[n][layer]) for n in names) + " |")
  return "\n".join(lines)


def describe(report: Mapping[str, Any]) -> str:
  """drift.md: what was compared, the table, the per-header table and how to read them."""
  a, b = report["a"], report["b"]
  pooled = ("mean-pooled over each prompt's real tokens" if report["pool"] == "mean" else
            "at each prompt's last token")
  lines = [
      f"# Drift: {b['label']} against {a['label']}",
      "",
      f"a = `{a['path']}` step {a['step']} ({a['mode']}), b = `{b['path']}` step {b['step']} "
      f"({b['mode']}); task {a['task']} {a['task_options']}.",
      "",
      markdown_table(report),
      "",
      f"CKA: {report['cka_variant']}, of each module's output (the residual stream after it), "
      f"{pooled}; "
      f"{report['examples']} prompts per input kind (the same questions, `task.sample` with seed "
      f"{report['seed']}, every level). 1 = the same representation up to rotation and scale.",
  ]
  headers = header_table(report)
  if headers:
    lines += ["", f"CKA by protocol header ({report['examples'] // len(KINDS['protocol'])} "
                  "prompts each; with few prompts per feature the plain estimator reads high):",
              "", headers]
  return "\n".join(lines) + "\n"


def plot(reports: Mapping[str, Mapping[str, Any]], out_png: str) -> str | None:
  """drift.png: relative parameter change per module (left) and CKA per layer for each input kind
  (right), one colour per report (label -> report), solid for task and dashed for protocol
  inputs. None if matplotlib is missing."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  fig = Figure(figsize=(11, 4.2 + 0.25 * len(reports)), layout="constrained")
  change_ax, cka_ax = fig.subplots(1, 2)
  styles = {"task": "-", "protocol": "--"}
  for color, (label, report) in zip(("C0", "C1", "C2", "C3", "C4"), reports.items()):
    names = [layer["name"] for layer in report["layers"]]
    change_ax.plot(names, [layer["relative_change"] for layer in report["layers"]], "o-",
                   color=color, label=label)
    with_cka = [layer for layer in report["layers"] if layer["cka"]["task"] is not None]
    for kind in KINDS:
      cka_ax.plot([layer["name"] for layer in with_cka], [layer["cka"][kind] for layer in with_cka],
                  "o" + styles.get(kind, ":"), color=color, label=f"{label}: {kind} inputs")
  change_ax.set_ylabel("‖θ_b − θ_a‖ / ‖θ_a‖")
  change_ax.set_title("parameter change per module")
  change_ax.set_ylim(bottom=0)
  cka_ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
  cka_ax.set_ylabel("linear CKA (a vs b)")
  cka_ax.set_title("representation similarity per layer")
  for ax in (change_ax, cka_ax):
    ax.tick_params(axis="x", labelrotation=45)
  # One legend below both panels (a comparison's colour is the same in each).
  fig.legend(*cka_ax.get_legend_handles_labels(), loc="outside lower center", ncols=2,
             fontsize="small")
  os.makedirs(os.path.dirname(out_png) or ".", exist_ok=True)
  fig.savefig(out_png)
  return out_png


# ---- checkpoints and the command line ----------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, int | None]:
  """``<workdir>[:step]`` or ``<workdir>/checkpoints/<step>`` -> (workdir, step or None)."""
  spec = spec.rstrip("/") or spec
  path, step = spec, None
  match = re.fullmatch(r"(.+):(\d+)", spec)
  if match:
    path, step = match.group(1), int(match.group(2))
  head, tail = os.path.split(path.rstrip("/"))
  if tail.isdigit() and os.path.basename(head) == "checkpoints":
    if step is not None and step != int(tail):
      raise DriftError(f"{spec}: two different steps ({tail} and {step})")
    path, step = os.path.dirname(head), int(tail)
  elif tail == "checkpoints":
    path = head
  return path, step


def load_checkpoint(spec: str):
  """(params, config ConfigDict, step, workdir) of the checkpoint a spec names; DriftError when
  the workdir, its checkpoints or the step do not exist."""
  workdir, step = parse_spec(spec)
  if not os.path.isdir(workdir):
    raise DriftError(f"{spec}: no such workdir {workdir}")
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise DriftError(f"{spec}: no checkpoints in {workdir} (no {directory})")
  with checkpoint_lib.Checkpointer(directory) as checkpointer:
    steps = checkpointer.all_steps()
  if not steps:
    raise DriftError(f"{spec}: no checkpoint in {directory}")
  if step is not None and step not in steps:
    raise DriftError(f"{spec}: no checkpoint at step {step} in {directory} (saved steps: "
                     f"{', '.join(map(str, steps))})")
  state, config, step = restore.load_state(workdir, step)
  return state.params, config, step, workdir


def _describe_checkpoint(spec: str, config, step: int, workdir: str) -> dict[str, Any]:
  return {"spec": spec, "path": workdir, "step": step, "mode": config.mode, "task": config.task,
          "task_options": dict(config.task_options), "label": f"{os.path.basename(workdir)}:{step}",
          "model": {k: config.model[k] for k in ("num_layers", "d_model", "num_heads", "d_ff")}}


def analyse(spec_a: str, spec_b: str, *, out: str | None = None, examples: int = 512,
            seed: int = 0, pool: str = "mean") -> dict[str, Any]:
  """Loads both checkpoints, compares them (``compare``) and writes drift.md, .json and .png.

  Args:
    spec_a, spec_b: checkpoints (``parse_spec``); a is the reference.
    out: output directory (default: ``<b's workdir>/drift``).
    examples, seed, pool: as in ``compare``.
  Returns:
    The report (``compare``'s, plus "a", "b", "files" and "table").
  Raises:
    DriftError: a missing workdir or step, or checkpoints of different tasks or shapes.
    amp_debate.train.checkpoint.CheckpointError: an unreadable checkpoint.
  """
  params_a, config_a, step_a, workdir_a = load_checkpoint(spec_a)
  params_b, config_b, step_b, workdir_b = load_checkpoint(spec_b)
  check_comparable(config_a, config_b, params_a, params_b)
  task = config_lib.make_task(config_a)
  report = compare(task, config_lib.make_model(config_a, task), params_a,
                   config_lib.make_model(config_b, task), params_b,
                   examples=examples, seed=seed, pool=pool)
  report["a"] = _describe_checkpoint(spec_a, config_a, step_a, workdir_a)
  report["b"] = _describe_checkpoint(spec_b, config_b, step_b, workdir_b)
  out = out or os.path.join(workdir_b, "drift")
  os.makedirs(out, exist_ok=True)
  report["table"] = markdown_table(report)
  files = [os.path.join(out, "drift.md"), os.path.join(out, "drift.json")]
  with open(files[0], "w") as f:
    f.write(describe(report))
  png = plot({f"{report['b']['label']} vs {report['a']['label']}": report},
             os.path.join(out, "drift.png"))
  files += [png] if png else []
  report["files"] = files
  with open(files[1], "w") as f:
    json.dump(report, f, indent=2)
  return report


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program: the drift study imports it). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("a", None, "Reference checkpoint: <workdir>[:step] or <workdir>/checkpoints/"
                      "<step> (default step: the latest).", **define)
  flags.DEFINE_string("b", None, "The checkpoint compared with it (same syntax).", **define)
  flags.DEFINE_string("out", None, "Output directory (default: <b's workdir>/drift).", **define)
  flags.DEFINE_integer("examples", 512, "Prompts per input kind.", lower_bound=8, **define)
  flags.DEFINE_integer("seed", 0, "Seed of the probe questions and claims.", **define)
  flags.DEFINE_enum("pool", "mean", POOLS, "Representation of a prompt: the mean over its real "
                    "tokens or its last token.", **define)
  return values


def _error(message: str) -> None:
  """A user's mistake: ``drift: <message>`` on stderr, exit code 1."""
  sys.exit(f"drift: {message}")


def main(argv: Sequence[str]) -> None:
  """absl's main: the flags are parsed into FLAGS already (stray arguments refused)."""
  del argv
  values = flags.FLAGS
  if not values.a or not values.b:
    _error("pass both checkpoints, --a=<workdir>[:step] --b=<workdir>[:step]")
  if not values["verbosity"].present:  # Orbax logs every file at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    report = analyse(values.a, values.b, out=values.out or None, examples=values.examples,
                     seed=values.seed, pool=values.pool)
  except (DriftError, checkpoint_lib.CheckpointError) as e:
    _error(str(e))
  print(describe(report))
  print("wrote " + ", ".join(report["files"]))


def run_main():
  cli.run(define_flags, main, error=_error)


if __name__ == "__main__":
  run_main()
