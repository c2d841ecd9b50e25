r"""Ahead-of-time compile of the sharded train step for TPU pod slices, on a machine without TPUs.

    pip install -e '.[aot]'      # libtpu, pinned to the jax release (an optional extra)
    python benchmarks/aot_tpu.py [--quick] [--presets base,large]
        [--topologies v5e:4x4,v5e:16x16] [--fsdp 1,16] [--task permutation] [--mode hybrid]
        [--dtype bfloat16] [--start-per-chip 16] [--max-compiles 6] [--no-search]
        [--hbm-gib 0] [--out benchmarks/results/aot_tpu.md]

For each model preset, TPU topology (libtpu's topology descriptions: ``jax.experimental.topologies``
makes compile-only devices for a slice such as ``v5e:16x16``, no TPU attached) and mesh
data × fsdp (``--fsdp`` values; data = chips / fsdp), the trainer's own jitted, sharded train step
(``programs.get``: the config validated by ``config_lib``, the mesh by
``sharding.make_mesh`` over the topology's devices, the state's shardings by
``sharding.state_shardings``, the step by ``sharding.shard_step``) is lowered against abstract
inputs (the TrainState's ShapeDtypeStructs carrying their NamedShardings, a replicated key) and
compiled by the TPU compiler. Nothing runs. Read back per device:

* XLA's memory analysis: arguments, outputs (the state is donated, so most of them alias the
  arguments: ``alias``), temporaries, generated code; total = arguments + outputs − aliased +
  temporaries + code, against the chip's HBM (``HBM_GIB``, or ``--hbm-gib``);
* XLA's cost analysis of the per-device program: FLOPs and bytes accessed. XLA counts a loop body
  once, not once per iteration (the debate's rounds, the model's decoding loops), so both are
  lower bounds.

With the search on, the largest global batch that fits: the per-chip batch (global batch / chips)
doubles from ``--start-per-chip`` while the step fits (once two batches fit, it jumps instead to
where the line through their totals meets HBM, then probes 1/16 above; ``search_batch``), then
bisects between the largest batch that fitted and the smallest that did not, until they are within
1/16 of each other or ``--max-compiles`` compiles were spent. A batch fits when the TPU compiler
accepts the program (it refuses one that cannot fit HBM: RESOURCE_EXHAUSTED) and the total above
is within HBM.

The config is ``experiments/configs/default.py:task=<task>,mode=<mode>,size=<preset>`` (the
full-size config) with ``model.dtype`` set to ``--dtype`` (bfloat16, the accelerator setting; the
default config's float32 is the CPU setting). ``--quick``: the quick start's config (tiny model) on
a 4-chip v5e:2x2 with data 2 × fsdp 2, one compile, no search (a smoke test; not the figures to
quote). ``--out FILE.md`` also writes ``FILE.json`` (every compile's numbers).

What this shows: that the program compiles for the slice, and the compiler's per-device memory and
cost estimates. What it does not: speed, memory fragmentation at run time, or that the step runs
(nothing was executed on a TPU). Without libtpu the script stops with a one-line message.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
import types

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from amp_debate import cli  # noqa: E402

GIB = 2 ** 30
MIB = 2 ** 20
# HBM per chip (GiB) by the device_kind libtpu reports (Cloud TPU documentation's figures).
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32}
# Set to 1 to take the path of a machine without libtpu (tests; a check of the message).
NO_LIBTPU_ENV = "AMP_DEBATE_AOT_NO_LIBTPU"
# Substrings of the TPU compiler's error when a program cannot fit the chip's memory.
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory")
PROGRAM = "python benchmarks/aot_tpu.py"
QUICK = dict(config_arg="task=permutation,mode=hybrid,quickstart", topologies="v5e:2x2",
             fsdp="2", search=False)


class AotError(Exception):
  """A user-facing problem (no libtpu, an unknown topology, a mesh that does not fit): one line."""


def libtpu_version() -> str | None:
  """The installed libtpu's version, or None when it is missing (or ``NO_LIBTPU_ENV`` is set)."""
  if os.environ.get(NO_LIBTPU_ENV, "") not in ("", "0"):
    return None
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return None


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return (text.splitlines() or [type(error).__name__])[0][:300]


def topology_devices(name: str) -> list:
  """The compile-only devices of the TPU slice ``name`` (e.g. ``v5e:4x4``, ``v5p:4x8x8``)."""
  from jax.experimental import topologies  # noqa: PLC0415

  try:
    devices = list(topologies.get_topology_desc(name, "tpu").devices)
  except Exception as e:  # noqa: BLE001  (libtpu reports a bad name as a generic runtime error)
    raise AotError(f"topology {name!r}: libtpu cannot describe it ({_first_line(e)})") from None
  # libtpu describes v4 (and v3) slices core by core, two per chip; JAX meshes on TPU >v3 take one
  # device per chip (megacore: the chip's two cores act as one device), so keep each chip's first.
  return [d for d in devices if getattr(d, "core_on_chip", 0) == 0]


def make_config(config_arg: str, batch: int, fsdp: int, dtype: str):
  """The trainer config: ``default.get_config(config_arg)`` with the batch, mesh (data = every
  device fsdp leaves) and compute dtype set."""
  from experiments.configs import default  # noqa: PLC0415

  try:
    config = default.get_config(config_arg)
  except ValueError as e:  # an unknown task, mode or preset
    raise AotError(_first_line(e)) from None
  config.batch_size = batch
  config.mesh.data, config.mesh.fsdp = -1, fsdp
  if dtype:
    config.model.dtype = dtype
  return config


def model_size(config) -> str:
  """"layers × d_model, dtype" of the config's model M."""
  from amp_debate.train import config_lib  # noqa: PLC0415

  m = config_lib.make_model(config, config_lib.make_task(config)).config
  return f"{m.num_layers}×{m.d_model}, {m.dtype}"


def compile_step(config, devices):
  """The trainer's sharded train step for ``config`` on a mesh over ``devices``, lowered against
  abstract sharded inputs and compiled (never run). Returns the ``jax.stages.Compiled``."""
  import jax  # noqa: PLC0415

  from amp_debate.train import config_lib, programs as programs_lib, sharding  # noqa: PLC0415

  try:
    config_lib.validate(config, num_devices=len(devices))
  except config_lib.ConfigError as e:
    raise AotError(str(e)) from None
  data, fsdp = config_lib.mesh_shape(config, len(devices))
  # The trainer caches programs by config, mesh shape and device ids; compile-only devices of two
  # topologies share ids, so start from an empty cache.
  programs_lib.clear()
  try:
    mesh = sharding.make_mesh(data=data, fsdp=fsdp, devices=devices)
    programs = programs_lib.get(config, mesh)  # the trainer's programs, not a copy
  except ValueError as e:  # e.g. fsdp does not divide d_model (sharding.state_shardings)
    raise AotError(_first_line(e)) from None
  # The loop's step for one run: the state with its leading run axis of 1, keys [1].
  state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct((1, *a.shape), a.dtype,
                                        sharding=programs_lib.stacked_sharding(s)),
      programs.abstract, programs.shardings)
  key = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 1))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
  return programs.train_step(1).lower(state, key).compile()


def analyse(compiled, hbm_bytes: float) -> dict:
  """Per-device memory (bytes) and cost of a compiled program, and whether it fits HBM."""
  memory = compiled.memory_analysis()
  row = {k: int(getattr(memory, f"{k}_size_in_bytes"))
         for k in ("argument", "output", "alias", "temp", "generated_code")}
  row["total"] = (row["argument"] + row["output"] - row["alias"] + row["temp"]
                  + row["generated_code"])
  row["peak"] = int(getattr(memory, "peak_memory_in_bytes", 0) or 0)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  row["flops"] = float(cost.get("flops", 0.0))
  row["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
  row["hbm"] = int(hbm_bytes)
  row["fits"] = row["total"] <= hbm_bytes
  return row


def try_batch(config_arg: str, devices, fsdp: int, per_chip: int, dtype: str,
              hbm_bytes: float) -> dict:
  """Compiles at global batch ``per_chip`` × chips: the ``analyse`` row, or {"fits": False,
  "oom": first line} when the compiler refuses it for memory. Adds batch and compile seconds."""
  chips = len(devices)
  config = make_config(config_arg, per_chip * chips, fsdp, dtype)
  start = time.perf_counter()
  try:
    row = analyse(compile_step(config, devices), hbm_bytes)
  except AotError:
    raise
  except Exception as e:  # noqa: BLE001  (XlaRuntimeError and friends)
    if not any(m in str(e) for m in OOM_MARKERS):
      raise AotError(f"compiling batch {per_chip * chips} on {chips} chips failed: "
                     f"{_first_line(e)}") from None
    row = {"fits": False, "oom": _first_line(e)}
  row.update(batch=per_chip * chips, per_chip=per_chip,
             compile_s=round(time.perf_counter() - start, 1))
  return row


def _predicted(rows: list[dict], hbm: float) -> int | None:
  """The per-chip batch at which a line through the fitted rows' totals reaches ``hbm`` (None
  with fewer than two distinct batches or a total that does not grow with the batch)."""
  points = {r["per_chip"]: r["total"] for r in rows if "total" in r}
  if len(points) < 2:
    return None
  (b0, t0), (b1, t1) = sorted(points.items())[-2:]
  slope = (t1 - t0) / (b1 - b0)
  return int(b1 + (hbm - t1) / slope) if slope > 0 else None


def search_batch(attempt, start: int, max_compiles: int, first: dict | None = None) -> dict:
  """The largest per-chip batch for which ``attempt(per_chip)["fits"]``, within ``max_compiles``
  calls (``first``: the row of ``start`` if already compiled).

  Doubling from ``start`` (halving while it does not fit), except that once two batches fit, the
  next one tried is where the line through their totals reaches HBM (if beyond the doubling; one
  compile instead of several doublings) and, once that one fits, 1/16 above it; then bisection
  between the largest batch that fitted and the smallest that did not, until they are within
  1/16 of each other. Returns {"fits": row of the largest batch that fitted or None, "fails": row
  of the smallest that did not or None, "tried": every row, in order}."""
  tried = [first] if first is not None else []
  cache = {r["per_chip"]: r for r in tried}
  good = bad = None
  b = start
  close = lambda: bad["per_chip"] - good["per_chip"] <= max(1, good["per_chip"] // 16)  # noqa: E731
  while True:
    if b not in cache:
      if len(tried) >= max_compiles:
        break
      cache[b] = attempt(b)
      tried.append(cache[b])
    row = cache[b]
    if row["fits"] and (good is None or b > good["per_chip"]):
      good = row
    if not row["fits"] and (bad is None or b < bad["per_chip"]):
      bad = row
    if good is None:
      if b == 1:
        break
      b //= 2
    elif bad is None:
      step = max(1, good["per_chip"] // 16)
      predicted = _predicted([r for r in tried if r["fits"]], good["hbm"])
      if predicted is not None and predicted > 2 * good["per_chip"]:
        b = predicted
      elif predicted is not None and predicted >= good["per_chip"] and b == predicted:
        b = good["per_chip"] + step  # the prediction fitted: probe just above it
      else:
        b = 2 * good["per_chip"]
    elif close():
      break
    else:
      b = (good["per_chip"] + bad["per_chip"]) // 2
  return {"fits": good, "fails": bad, "tried": tried}


# ---- report ------------------------------------------------------------------------------------
def _mib(value) -> str:
  return f"{value / MIB:,.0f}"


def _memory_cells(row: dict) -> str:
  if "total" not in row:
    return "compile refused (out of memory)" + " |" * 8
  return (f"{_mib(row['argument'])} | {_mib(row['output'])} | {_mib(row['alias'])} | "
          f"{_mib(row['temp'])} | {_mib(row['generated_code'])} | {_mib(row['total'])} | "
          f"{row['total'] / row['hbm']:.1%} | {row['flops'] / 1e9:,.1f} | "
          f"{row['bytes_accessed'] / GIB:,.2f}")


def report(results: list[dict], meta: dict) -> str:
  """Markdown: a row per (preset, topology, mesh) at the start batch, then the search's results."""
  head = ("| preset | topology (chip) | chips | mesh data×fsdp | global batch | arguments MiB | "
          "outputs MiB | aliased MiB | temporaries MiB | code MiB | total MiB | of HBM | "
          "GFLOP per device | GiB accessed per device |\n" + "|---" * 14 + "|\n")
  rows, search = [], []
  for r in results:
    where = (f"| {r['preset']} ({r['model']}) | {r['topology']} ({r['device_kind']}, "
             f"{r['hbm_gib']:g} GiB) | {r['chips']} | {r['data']}×{r['fsdp']} |")
    first = r["tried"][0]
    rows.append(f"{where} {first['batch']} | {_memory_cells(first)} |")
    if meta["search"]:
      fit, fail = r["fits"], r["fails"]
      fit_text = (f"{fit['batch']} ({fit['per_chip']} per chip), total {_mib(fit['total'])} MiB "
                  f"= {fit['total'] / fit['hbm']:.0%} of HBM" if fit else "none tried fits")
      if fail is None:
        fail_text = "none found within the compile budget (a lower bound)"
      elif "oom" in fail:
        fail_text = f"{fail['batch']}: compiler refused ({fail['oom'][:90]})"
      else:
        fail_text = f"{fail['batch']}: total {_mib(fail['total'])} MiB over HBM"
      search.append(f"{where} {fit_text} | {fail_text} | {len(r['tried'])} | "
                    f"{sum(t['compile_s'] for t in r['tried']):.0f} |")
  text = (f"# Ahead-of-time compile of the train step for TPU slices\n\n"
          f"Compiled on {meta['host']} for TPU topologies described by libtpu {meta['libtpu']} "
          f"(jax {meta['jax']}, jaxlib {meta['jaxlib']}); **nothing ran on a TPU**. Config: "
          f"`experiments/configs/default.py:{meta['config_arg']}` with "
          f"`model.dtype={meta['dtype'] or 'as configured'}`; the trainer's own sharded step "
          f"(`programs.get`, one run), state donated. Memory per device from XLA's memory analysis; "
          f"total = arguments + outputs − aliased (donated state) + temporaries + code. FLOPs "
          f"and "
          f"bytes from XLA's cost analysis of the per-device program, loop bodies counted once "
          f"(lower bounds).\n\n"
          f"Command: `{meta['command']}`\n\n"
          f"## Per device at the starting batch\n\n{head}" + "\n".join(rows) + "\n")
  if search:
    text += ("\n## Largest global batch that fits\n\n"
             "Per-chip batch doubled from the start while the step fit, then bisected to within "
             "1/16 (or until the compile budget ran out). Fits = the TPU compiler accepted the "
             "program and the total is within HBM.\n\n"
             "| preset | topology (chip) | chips | mesh data×fsdp | largest batch that fits | "
             "smallest that does not | compiles | compile s |\n" + "|---" * 8 + "|\n"
             + "\n".join(search) + "\n")
  text += (
      "\n## What this does and does not show\n\n"
      "- Shows: the trainer's sharded train step compiles for these TPU slices and meshes, and "
      "the TPU compiler's per-device estimates of memory (its buffer assignment) and of work.\n"
      "- Does not show: that the step runs on a TPU, its speed, run-time fragmentation or "
      "collectives' behaviour, multi-host input or checkpointing; the compile-only devices are "
      "one process's view of the slice. The FLOPs count each loop body once (the debate's rounds "
      "and the decoding loops iterate many times), so they are not a step's work.\n")
  return text


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_bool("quick", False,
                    "one tiny config on a 4-chip v5e:2x2, one compile (a smoke test)", **define)
  flags.DEFINE_string("task", "permutation", "the task", **define)
  flags.DEFINE_string("mode", "hybrid", "the training mode", **define)
  flags.DEFINE_string("presets", "base,large", "comma-separated model presets", **define)
  flags.DEFINE_string("topologies", "v5e:4x4,v5e:16x16",
                      "libtpu topology names, e.g. v5e:4x4 (16 chips), v5p:4x8x8 (256)", **define)
  flags.DEFINE_string("fsdp", "1,16", "fsdp sizes (data = chips / fsdp)", **define)
  flags.DEFINE_string("dtype", "bfloat16", "model.dtype ('' keeps the config's)", **define)
  flags.DEFINE_integer("start-per-chip", 16,
                       "per-chip batch of the first compile (the default config: 256 / 16)",
                       **define)
  flags.DEFINE_integer("max-compiles", 6, "per batch search", **define)
  flags.DEFINE_bool("no-search", False, "no batch search: one compile at --start-per-chip",
                    **define)
  flags.DEFINE_float("hbm-gib", 0.0, "HBM per chip (0: by the chip, HBM_GIB)", **define)
  flags.DEFINE_string("out", "", "FILE.md; FILE.json gets every compile's numbers", **define)
  return values


def arguments(values: flags.FlagValues) -> types.SimpleNamespace:
  """The parsed flags as ``run`` reads them (``args.start_per_chip``, ``args.search``, ...);
  exits with a one-line error on a bad value."""
  args = cli.namespace(values)
  args.search = not args.no_search
  if args.start_per_chip < 1 or args.max_compiles < 1:
    cli.fail("--start-per-chip and --max-compiles must be >= 1")
  return args


def write(text: str, data: dict, out: str) -> None:
  """``out`` (markdown) and its .json sibling."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    f.write(text)
  with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(data, f, indent=1)


def run(args, command: str) -> tuple[str, dict]:
  """Compiles every (preset, topology, mesh) of ``args``: (markdown report, JSON-able dict).
  With ``args.out`` the report so far is written after each one (a long run keeps what it did)."""
  version = libtpu_version()
  if version is None:
    raise AotError("libtpu is not installed (pip install -e '.[aot]'); it compiles for TPU "
                   "topologies without TPUs")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU compiler is loaded on demand
  # No TPU VM metadata here: name this host as the slice's worker (else libtpu logs an error per
  # process), and let more than one process load libtpu (it takes a lock file otherwise; the
  # devices are compile-only, so nothing is shared).
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  import jax  # noqa: PLC0415
  import jaxlib  # noqa: PLC0415

  if args.quick:
    presets, config_args = ["quickstart"], {"quickstart": QUICK["config_arg"]}
    topologies, fsdps, search = [QUICK["topologies"]], [int(QUICK["fsdp"])], QUICK["search"]
  else:
    presets = [p for p in args.presets.split(",") if p]
    config_args = {p: f"task={args.task},mode={args.mode},size={p}" for p in presets}
    topologies = [t for t in args.topologies.split(",") if t]
    fsdps, search = [int(f) for f in args.fsdp.split(",") if f], args.search
  meta = {"command": command, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "libtpu": version, "host": f"{platform.machine()} CPU ({os.cpu_count()} cores)",
          "dtype": args.dtype, "search": search,
          "config_arg": (config_args[presets[0]] if args.quick else
                         f"task={args.task},mode={args.mode},size=<preset>")}
  results = []
  for topology in topologies:
    devices = topology_devices(topology)
    kind = devices[0].device_kind
    hbm_gib = args.hbm_gib or HBM_GIB.get(kind)
    if not hbm_gib:
      raise AotError(f"no HBM size known for {kind!r} ({topology}); pass --hbm-gib")
    for preset in presets:
      for fsdp in fsdps:
        if len(devices) % fsdp:
          raise AotError(f"--fsdp {fsdp} does not divide the {len(devices)} chips of {topology}")
        start = (64 // len(devices) or 1) if args.quick else args.start_per_chip
        attempt = lambda b, fsdp=fsdp, preset=preset: try_batch(  # noqa: E731
            config_args[preset], devices, fsdp, b, args.dtype, hbm_gib * GIB)
        first = attempt(start)
        found = (search_batch(attempt, start, args.max_compiles, first) if search
                 else {"fits": None, "fails": None, "tried": [first]})
        result = {"preset": preset, "model": model_size(make_config(
                      config_args[preset], start * len(devices), fsdp, args.dtype)),
                  "topology": topology, "device_kind": kind,
                  "hbm_gib": hbm_gib, "chips": len(devices), "data": len(devices) // fsdp,
                  "fsdp": fsdp, **found}
        results.append(result)
        if args.out:
          write(report(results, meta), {"meta": meta, "results": results}, args.out)
        print(f"{preset} {topology} {result['data']}x{fsdp}: " + ", ".join(
            f"batch {t['batch']} " + (f"{t['total'] / MIB:,.0f} MiB" if "total" in t else "OOM")
            + f" ({t['compile_s']:.0f} s)" for t in found["tried"]), file=sys.stderr, flush=True)
  return report(results, meta), {"meta": meta, "results": results}


def execute(values: flags.FlagValues, command: str) -> dict:
  """The compiles the parsed flags ``values`` ask for (the module docstring); ``command`` is the
  command line the report names. Returns the report's data."""
  args = arguments(values)
  try:
    text, data = run(args, command.strip())
  except AotError as e:
    sys.exit(f"aot_tpu.py: {e}")
  print(text)
  if args.out:
    write(text, data, args.out)
  return data


# command_line(argv) in this process, and absl's main.
command_line, main = cli.recorded(define_flags, execute, PROGRAM)


if __name__ == "__main__":
  cli.run(define_flags, main)
