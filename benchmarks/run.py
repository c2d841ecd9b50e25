"""Every performance figure of issues 11 and 29 in one run: a table of goals and measured ratios.

    python benchmarks/run.py [--quick] [--skip time_to_accuracy,memory] [--out DIR]

Runs, one after another on this machine's default device, ``step.py`` (cost per step and per
optimiser update by mode, FLOPs, utilisation, phases), ``rollout.py`` (cost against t_max; the
on-device loops against a host loop over rounds; then again with scripted games that run to a
leaf, ``--players oracle-liar``), ``seeds.py`` (vmapped runs), ``memory.py``
(compiled memory against batch and t_max; the largest batch in 16 GiB per preset) and
``time_to_accuracy.py`` (training seconds to >= 95% held-out accuracy at every level), then
writes ``<out>/<machine>.md``: the goals table followed by every script's own report (each with
the command that reproduces it). ``<machine>`` is the platform, plus the device kind on
accelerators (``cpu``, ``gpu_nvidia_h200``). ``--quick`` shrinks repeats and sizes (a smoke run
of every script: its figures are not the ones to quote).
"""

from __future__ import annotations

import os
import re
import sys

import jax
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import memory  # noqa: E402
import rollout  # noqa: E402
import seeds  # noqa: E402
import step  # noqa: E402
import time_to_accuracy  # noqa: E402

from amp_debate import cli  # noqa: E402

SCRIPTS = ("step", "rollout", "rollout_leaf", "seeds", "memory", "time_to_accuracy")


def machine_name() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    return "cpu"
  return re.sub(r"[^a-z0-9]+", "_", f"{device.platform} {device.device_kind}".lower()).strip("_")


def _verdict(value: float | None, limit: float) -> str:
  if value is None:
    return "not measured"
  return "met" if value <= limit else "missed"


def goals(results: dict) -> list[tuple[str, str, str, str]]:
  """(goal, target, measured, verdict) rows from the scripts' summaries."""
  out = []
  if "step" in results:
    rows, base = results["step"]["rows"], results["step"]["base_s"]
    sup_batch = next((r["batch"] for r in rows if r["mode"] == "supervised"), None)
    for mode, limit in (("amplification", None), ("hybrid", 4.0)):
      mine = [r for r in rows if r["mode"] == mode and r["updates"] == 1]
      if not mine or not base:
        continue
      # Per question processed (issue 29): a step's time over its batch, against supervised's.
      ratio = mine[0]["median_s"] / mine[0]["batch"] / (base / sup_batch)
      out.append((f"1. {mode} step vs a supervised step, per question processed (every level "
                  f"open)", f"<= {limit:g}x" if limit else "(reported)", f"{ratio:.1f}x",
                  _verdict(ratio, limit) if limit else "–"))
  if "time_to_accuracy" in results:
    tta = results["time_to_accuracy"]
    rows, base, base_step = tta["rows"], tta["base_s"], tta["base_step"]
    for r in rows:
      if r["mode"] == "supervised":
        continue
      seeds = f"{r['reached']}/{len(r['seeds'])} seeds"
      if r["mode"] == "amplification":
        ratio = r["step"] / base_step if (r["step"] and base_step) else None
        measured = (f"{ratio:.1f}x (median {r['step']:.0f} vs {base_step:.0f} steps; {seeds})"
                    if ratio else f"not reached ({seeds})")
        out.append((f"2. steps to >= 95% at every level: {r['name']} vs supervised", "<= 2x",
                    measured, _verdict(ratio, 2.0) if r["reached"] == len(r["seeds"])
                    else "missed"))
      else:
        ratio = r["seconds"] / base if (r["seconds"] and base) else None
        measured = (f"{ratio:.1f}x (median {r['seconds']:.0f} s vs {base:.0f} s; {seeds})"
                    if ratio else f"not reached ({seeds})")
        out.append((f"3. training time to >= 95% at every level: {r['name']} vs supervised",
                    "<= 3x", measured, _verdict(ratio, 3.0) if r["reached"] == len(r["seeds"])
                    else "missed"))
  if "seeds" in results:
    times = results["seeds"]["times"]
    if 1 in times and 4 in times:
      ratio = times[4] / times[1]
      out.append(("4. 4 vmapped seeds vs one seed", "<= 2x", f"{ratio:.2f}x",
                  _verdict(ratio, 2.0)))
  if "rollout" in results:
    med = results["rollout"]["medians"]
    if (32, True) in med and (8, True) in med:
      ratio = med[32, True] / med[8, True]
      out.append(("5. rollout t_max 32 vs 8 (early-exit loop)", "<= 1.3x", f"{ratio:.2f}x",
                  _verdict(ratio, 1.3)))
    for batch, (scan, loop, host) in sorted(results["rollout"]["host"].items()):
      ratio = loop / host
      out.append((f"5. early-exit rollout vs host loop over rounds, batch {batch}", "<= 1x",
                  f"{ratio:.2f}x", _verdict(ratio, 1.0)))
  if "rollout_leaf" in results:
    med = results["rollout_leaf"]["medians"]
    if (32, True) in med and (12, True) in med:
      ratio = med[32, True] / med[12, True]
      out.append(("5. rollout of games to a leaf (scripted liar vs oracle, up to 10 arguments): "
                  "t_max 32 vs 12 (early-exit loop)", "<= 1.3x", f"{ratio:.2f}x",
                  _verdict(ratio, 1.3)))
  if "step" in results:
    out.append(("6. FLOPs, utilisation, phases; no recompilation or host transfer after the "
                "first step", "reported, asserted", "see the step report", "met"))
  if "memory" in results:
    for preset, m in results["memory"]["presets"].items():
      lengths = results["memory"]["lengths"]
      by_t = m.get("t_max_ratios")
      t_note = (f"; t_max {lengths[-1]} vs {lengths[0]}: {by_t[-1]:.2f}x" if by_t else "")
      out.append((f"7. memory, preset {preset}", "linear in batch and t_max; batch in 16 GiB",
                  f"largest batch {m['fits']}; deviation from linear {m['deviation']:.1%}"
                  f"{t_note}", "reported"))
  return out


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_bool("quick", False, "smaller repeats and sizes: a smoke run of every script",
                    **define)
  flags.DEFINE_string("skip", "", f"comma-separated, of {', '.join(SCRIPTS)}", **define)
  flags.DEFINE_string("out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                      "directory of the report", **define)
  return values


def execute(args: flags.FlagValues) -> dict:
  """Every benchmark (each script's ``command_line``, in this process), then the goals table;
  returns the scripts' results by name."""
  skip = {s for s in args.skip.split(",") if s}
  if skip - set(SCRIPTS):
    cli.fail(f"--skip: unknown {sorted(skip - set(SCRIPTS))}; choose from {SCRIPTS}")
  quick = args.quick
  argvs = {
      "step": ["--steps", "2" if quick else "10", "--repeats", "2" if quick else "5",
               "--phases", "hybrid"],
      # Four levels below the root: debates run past 4 arguments (issue 29).
      "rollout": ["--task-options", "max_exponent=16"] + (
          ["--t_max", "4,8", "--host-batches", "16", "--host-t-max", "4", "--repeats", "1"]
          if quick else []),
      # Scripted games that run to a leaf (up to 10 arguments): cost against the games' length.
      "rollout_leaf": ["--task-options", "max_exponent=16", "--players", "oracle-liar",
                       "--host-batches", ""] + (["--t_max", "4,12", "--repeats", "1"]
                                                if quick else []),
      "seeds": ["--seeds", "1,4", "--steps", "1", "--repeats", "1"] if quick else [],
      "memory": (["--presets", "tiny", "--batches", "8,16", "--t-max", "4,8"] if quick else []),
      # The three modes, then each with the curriculum's bias-corrected EMA (issue 29's
      # intervention on the level's dwell), 3 seeds each.
      "time_to_accuracy": (["--steps", "20", "--eval-every", "10", "--seeds", "1", "--runs",
                            "supervised;hybrid:step.num_minibatches=2"] if quick else
                           ["--runs", "supervised;amplification;hybrid;"
                            "amplification:curriculum.debias=true;hybrid:curriculum.debias=true"]),
  }
  modules = {"step": step, "rollout": rollout, "rollout_leaf": rollout, "seeds": seeds, "memory": memory,
             "time_to_accuracy": time_to_accuracy}
  results = {}
  for name in SCRIPTS:
    if name in skip:
      continue
    print(f"== {name} ==", file=sys.stderr, flush=True)
    results[name] = modules[name].command_line(argvs[name])
  lines = ["| goal | target | measured | verdict |", "|---|---|---|---|"]
  lines += [f"| {g} | {t} | {m} | {v} |" for g, t, m, v in goals(results)]
  device = jax.devices()[0]
  report = (f"# Performance on {machine_name()} ({device.platform}, {device.device_kind}, "
            f"{os.cpu_count()} host cores), jax {jax.__version__}\n\n"
            f"Command: python benchmarks/run.py{' --quick' if quick else ''}"
            f"{' --skip ' + args.skip if skip else ''}\n\n" + "\n".join(lines) + "\n\n" +
            "\n\n".join(f"## {name}\n\n{results[name]['report']}" for name in results))
  path = os.path.join(args.out, f"{machine_name()}{'_quick' if quick else ''}.md")
  os.makedirs(args.out, exist_ok=True)
  with open(path, "w") as f:
    f.write(report)
  print("\n".join(lines))
  print(f"\nwrote {path}")
  return results


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="run.py")


def main(argv) -> None:
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
