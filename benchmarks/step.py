"""Cost of one train step by mode, measured in one run: time, FLOPs, utilisation, memory.

    python benchmarks/step.py [--task permutation] [--modes supervised,amplification,hybrid]
        [--batch 0] [--steps 10] [--repeats 5] [--phases hybrid]
        [--out FILE]

Each mode's step is built exactly as the trainer builds it from
``experiments/configs/default.py:task=<task>,mode=<mode>,runlocal`` (``quickstart`` for
permutation: ``default.cpu_arg``; model, optimiser, debate and
step options; ``--batch`` > 0 overrides the batch size), with the curriculum off (questions of
every level from the first step), and jitted on one device. Reported:

* step time: median over ``--repeats`` blocks of ``--steps`` steps each (the block's time / steps),
  with the fastest and slowest block, after two untimed steps (compile and warm-up);
* the ratio of each mode's median to the supervised step's, per step and per optimiser update:
  with ``--reuse`` EPOCHSxMINIBATCHES each debate mode is also timed with that many updates
  per rollout, each on batch / MINIBATCHES games (the goal in issue 11: hybrid <= 5x,
  amplification-only <= 3x per optimiser update);
* FLOPs per step from XLA's cost analysis of the compiled step. XLA counts a loop body once, not
  once per iteration, so for the debate modes (a ``lax.scan`` / ``while_loop`` over turns, the
  model's decoding loops, the packed gradient passes' chunk loop) this is a lower bound;
* utilisation: those FLOPs per second over the matmul peak measured in the same run (fp32,
  1024 x 1024 x 1024, best of 5);
* compiled memory: arguments, outputs and temporaries (XLA's memory analysis);
* for the modes in ``--phases``: the step's main phases jitted and timed alone (``phases``).

Asserted while timing: no step is traced (compiled) again after the first, and nothing moves
between host and device (``jax.transfer_guard("disallow")``): the step keeps everything on device.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import common
import jax
import jax.numpy as jnp
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from amp_debate import cli  # noqa: E402
from amp_debate.train import config_lib  # noqa: E402
from amp_debate.train import step as step_lib  # noqa: E402
from experiments.configs import default  # noqa: E402

MODES = ("supervised", "amplification", "hybrid", "debate")


def matmul_peak(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of the fastest of ``repeats`` fp32 n x n x n matmuls."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  return 2 * n ** 3 / min(common.call_times(jax.jit(lambda x: x @ x), a, repeats=repeats))


def measure(task_name: str, mode: str, batch: int, steps: int, repeats: int,
            epochs: int = 1, minibatches: int = 1) -> dict:
  """One mode's step: {"mode", "batch", "updates", "median_s", "min_s", "max_s", "flops",
  "memory"}; ``epochs`` x ``minibatches`` optimiser updates per rollout."""
  config = default.get_config(default.cpu_arg(task_name, mode))
  if batch:
    config.batch_size = batch
  config.step.update_epochs, config.step.num_minibatches = epochs, minibatches
  # Every level from the first step (the mix a run trains on once the curriculum has opened
  # them all): the packed gradient passes cost what the batch's real rows cost, and the adaptive
  # curriculum's first steps (leaf questions only) have few.
  config.curriculum.kind = "off"
  task, model, tx, step_config, pure = common.build_step(config)
  traces = []

  def counted(state, rng):
    traces.append(1)  # runs once per trace
    return pure(state, rng)

  train_step = jax.jit(counted, donate_argnums=0)
  state = jax.jit(lambda rng: step_lib.init_state(task, model, tx, step_config, rng))(
      jax.random.key(config.seed))
  keys = list(jax.random.split(jax.random.key(1), 2 + steps * repeats))
  compiled = train_step.lower(state, keys[0]).compile()
  memory = compiled.memory_analysis()
  for key in keys[:2]:  # compile (the jit's own) and warm up
    state, metrics = train_step(state, key)
  jax.block_until_ready(state)
  times = []
  with jax.transfer_guard("disallow"):
    for r in range(repeats):
      start = time.perf_counter()
      for key in keys[2 + r * steps: 2 + (r + 1) * steps]:
        state, metrics = train_step(state, key)
      jax.block_until_ready((state, metrics))
      times.append((time.perf_counter() - start) / steps)
  assert len(traces) == 1, f"{mode}: the step was traced {len(traces)} times"
  name = mode if epochs * minibatches == 1 else f"{mode}, {epochs} epoch(s) x {minibatches} " \
      "minibatches"
  return {"mode": mode, "name": name, "batch": config.batch_size,
          "updates": 1 if mode == "supervised" else epochs * minibatches,
          "median_s": statistics.median(times),
          "min_s": min(times), "max_s": max(times), "flops": common.compiled_flops(compiled),
          "memory": {"arguments": memory.argument_size_in_bytes,
                     "outputs": memory.output_size_in_bytes,
                     "temporaries": memory.temp_size_in_bytes}}


def phases(task_name: str, mode: str, batch: int, repeats: int) -> dict[str, tuple[float, float]]:
  """{phase: (median seconds, compiled GFLOP)} of the step's main phases, each jitted alone on an
  untrained M (so they do not add up exactly to the step): the debate rollout, M's greedy answers
  (the curriculum signal), and the gradients of the policy loss over the recorded answer rows and
  of the distillation loss over the target rows (the log-probability passes the losses take)."""
  from amp_debate.procedure import credit, debate, packing  # noqa: PLC0415
  from amp_debate.procedure.model_player import ModelDebater  # noqa: PLC0415

  config = default.get_config(default.cpu_arg(task_name, mode))
  if batch:
    config.batch_size = batch
  task = config_lib.make_task(config)
  model = config_lib.make_model(config, task)
  step_config = config_lib.make_step_config(config)
  played = step_config.debate
  params = jax.jit(model.init)(jax.random.key(0))
  questions = task.sample(jax.random.key(1), config.batch_size,
                          difficulty=task.max_difficulty).questions

  def rollout(params, questions, rng):
    m = ModelDebater(model=model, params=params, task=task, temperature=step_config.temperature)
    assigned = (debate.sample_assignments(rng, questions.shape[0], played.assign_prob)
                if played.assign_prob > 0 else None)
    return debate.rollout(task, m, m, questions, rng, played, assigned=assigned)

  rollout = jax.jit(rollout)
  _, transcript = rollout(params, questions, jax.random.key(2))
  prows = credit.per_game(credit.policy_rows(task, transcript))
  drows = credit.distill_rows(task, transcript, played, by_game=True)
  width = step_config.pack_width

  def pooled_rows(rows, merge):
    """As the step packs on one device: every game's rows in one pool, real rows first; with
    ``merge`` identical rows are scored once (the step does this for distillation targets)."""
    pool, active = packing.pooled(rows, rows.active, 1)
    if merge:
      active = step_lib.duplicate_counts(pool, active) > 0
    return packing.active_first(pool, active)

  def grad_of(rows, temperature, packed, merge=False):
    def log_prob_sum(p, chunk):
      flat = chunk.flatten()
      return model.log_prob(p, step_lib._safe_prompts(flat.prompts), flat.tokens,
                            answer_mask=flat.mask, temperature=temperature).sum()
    if not packed:
      return jax.jit(lambda p: jax.grad(log_prob_sum)(p, rows))
    ordered, active = pooled_rows(rows, merge)
    games = rows.active.shape[0]
    return jax.jit(lambda p: packing.chunked_sum(lambda c: jax.grad(log_prob_sum)(p, c),
                                                 ordered, active, width * games))

  greedy = jax.jit(lambda p, q, rng: step_lib._greedy_answers(task, model, p, q, rng))
  skipped = ("; the step skips it: one-argument debates"
             if step_lib.skips_policy_pass(step_config) else "")
  calls = {"rollout": (rollout, (params, questions, jax.random.key(2))),
           "greedy answers": (greedy, (params, questions, jax.random.key(3)))}
  for label, rows, temperature in (("policy", prows, step_config.temperature),
                                   ("distillation", drows, 1.0)):
    size = f"{rows.active.size} rows, {int(rows.active.sum())} real"
    note = skipped if label == "policy" else ""
    calls[f"{label} gradient, every slot ({size}){note}"] = (
        grad_of(rows, temperature, False), (params,))
    if width:
      games = rows.active.shape[0]
      merge = label == "distillation"
      real = int(pooled_rows(rows, merge)[1].sum())
      merged = f", {real} distinct" if merge else ""
      calls[f"{label} gradient, packed (pack_width {width}: {-(-real // (width * games))} "
            f"chunks of {games * width} rows{merged}){note}"] = (
          grad_of(rows, temperature, True, merge), (params,))
  out = {}
  for name, (fn, args) in calls.items():
    out[name] = (statistics.median(common.call_times(fn, *args, repeats=repeats)),
                 common.compiled_flops(fn.lower(*args).compile()) / 1e9)
  return out


def table(rows: list[dict], peak: float) -> str:
  base = next((r["median_s"] for r in rows if r["mode"] == "supervised"), None)
  lines = ["| mode | batch | step time, median (min–max) | vs supervised | optimiser updates "
           "per step | per update, vs supervised | GFLOP per step (compiled, lower bound) | "
           "utilisation of peak | temporaries MiB |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ratio = f"{r['median_s'] / base:.1f}x" if base else "–"
    per_update = f"{r['median_s'] / r['updates'] / base:.1f}x" if base else "–"
    utilisation = r["flops"] / r["median_s"] / peak
    lines.append(
        f"| {r['name']} | {r['batch']} | {r['median_s'] * 1e3:.1f} ms "
        f"({r['min_s'] * 1e3:.1f}–{r['max_s'] * 1e3:.1f}) | {ratio} | {r['updates']} | "
        f"{per_update} | {r['flops'] / 1e9:.3f} | {utilisation:.1%} | "
        f"{r['memory']['temporaries'] / 2 ** 20:.1f} |")
  return "\n".join(lines)


def parse_reuse(text: str) -> list[tuple[int, int]]:
  """'1x4,2x4' -> [(1, 4), (2, 4)] (update_epochs x num_minibatches)."""
  out = []
  for item in filter(None, text.split(",")):
    epochs, _, minibatches = item.partition("x")
    out.append((int(epochs), int(minibatches or 1)))
  return out


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("task", "permutation", "the task", **define)
  flags.DEFINE_string("modes", "supervised,amplification,hybrid",
                      f"comma-separated, of {', '.join(MODES)}", **define)
  flags.DEFINE_integer("batch", 0, "> 0: overrides the config's batch", **define)
  flags.DEFINE_integer("steps", 10, "steps per timed block", **define)
  flags.DEFINE_integer("repeats", 5, "timed blocks per mode", **define)
  flags.DEFINE_string("phases", "hybrid",
                      "comma-separated modes whose phases to time alone ('' for none)", **define)
  flags.DEFINE_string("reuse", "1x4,2x4",
                      "comma-separated EPOCHSxMINIBATCHES settings of each debate mode in "
                      "--modes, timed besides its default 1x1 ('' for none)", **define)
  flags.DEFINE_string("out", "", "also write the report (markdown) here", **define)
  return values


def execute(values: flags.FlagValues) -> dict:
  """The benchmark the parsed flags ``values`` ask for (the module docstring)."""
  args = cli.namespace(values)
  modes = [m for m in args.modes.split(",") if m]
  bad = [m for m in modes if m not in MODES]
  if bad or not modes:
    cli.fail(f"--modes: unknown {bad or 'none given'}; choose from {', '.join(MODES)}")
  if args.steps < 1 or args.repeats < 1 or args.batch < 0:
    cli.fail("--steps and --repeats must be >= 1, --batch >= 0")

  peak = matmul_peak()
  rows = []
  for mode in modes:
    try:
      rows.append(measure(args.task, mode, args.batch, args.steps, args.repeats))
    except config_lib.ConfigError as e:
      cli.fail(str(e))
    print(f"{mode}: {rows[-1]['median_s'] * 1e3:.1f} ms per step", file=sys.stderr, flush=True)
  debate_modes = [m for m in modes if m != "supervised"]
  try:
    reuse = parse_reuse(args.reuse)
  except ValueError:
    cli.fail(f"--reuse must look like 1x4,2x4, got {args.reuse!r}")
  for mode in debate_modes:
    for epochs, minibatches in reuse:
      rows.append(measure(args.task, mode, args.batch, args.steps, args.repeats, epochs,
                          minibatches))
      print(f"{rows[-1]['name']}: {rows[-1]['median_s'] * 1e3:.1f} ms per step",
            file=sys.stderr, flush=True)
  phase_lines = []
  for mode in [m for m in args.phases.split(",") if m]:
    if mode not in MODES[1:]:
      cli.fail(f"--phases: {mode!r} has no debate phases; choose from {', '.join(MODES[1:])}")
    phase_lines += [f"| {mode} | {name} | {t * 1e3:.1f} ms | {gflop:.2f} |"
                    for name, (t, gflop) in phases(args.task, mode, args.batch,
                                                   args.repeats).items()]
  phase_table = ""
  if phase_lines:
    phase_table = ("\n\nPhases, each jitted and timed alone on an untrained M at the top level "
                   "(they do not add up exactly to the step):\n\n| mode | phase | median time | "
                   "compiled GFLOP |\n|---|---|---|---|\n" + "\n".join(phase_lines))
  device = jax.devices()[0]
  report = (f"Train step by mode: {args.task} runlocal config, {device.platform} "
            f"({device.device_kind}, {os.cpu_count()} host cores), jax {jax.__version__}; "
            f"{args.repeats} blocks of {args.steps} steps each. Matmul peak measured in the same "
            f"run: {peak / 1e9:.0f} GFLOP/s (fp32, 1024^3).\n\n{table(rows, peak)}{phase_table}\n\n"
            f"Command: python benchmarks/step.py --task {args.task} --modes {args.modes} "
            f"--batch {args.batch} --steps {args.steps} --repeats {args.repeats} "
            f"--phases '{args.phases}' --reuse '{args.reuse}'\n")
  common.emit(report, args.out)
  base = next((r["median_s"] for r in rows if r["mode"] == "supervised"), None)
  return {"rows": rows, "base_s": base, "report": report}


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="step.py")


def main(argv) -> None:
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)

if __name__ == "__main__":
  cli.run(define_flags, main)
