"""Test setup: 8 simulated CPU devices, XLA at backend optimisation level 0, and no persistent
compilation cache.

All are environment variables set before JAX initialises, so subprocesses started by tests (the CLI,
resume and multi-process tests) inherit them.
"""

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# XLA:CPU's older elemental emitters instead of its fusion emitters: the tiny hybrid step compiled
# in 6.5 s of CPU instead of 15 s (trace and lowering unchanged), and test_credit.py took 103 s of
# CPU instead of 160 s (issue 30, measured on the shared 2-core machine). The tests' programs are
# tiny, so their run time does not matter. Tests only, like the flag above.
if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
# No persistent XLA compilation cache. Reading or writing an executable for it segfaulted xdist
# workers four times in the sessions of 2026-12-06 and -07. The cause found later
# (``_release_compiled_programs`` below) was the workers' memory-mapping count, which those
# crashes fit too. The cache stays off: without it the suite was no slower (its repeats are
# in-process). Subprocesses inherit this variable.
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402

# The slowest modules first. With ``--dist loadfile`` (setup.cfg) each module runs whole on one
# xdist worker; a long module scheduled last leaves the other worker idle for minutes (seen: the
# trainer tests, which xdist's default reordering by number of tests put last). Longest first,
# with ``--no-loadscope-reorder`` so xdist keeps this order, balances the two workers; the order
# of tests within a module is kept (a stable sort).
_SLOW_FIRST = ("test_trainer.py", "test_sharding.py", "test_step.py", "test_debate.py",
               "test_sweep.py", "test_multiprocess_preemption.py", "test_overseer.py",
               "test_kl_budget.py", "test_liars.py", "test_credit.py", "test_model_player.py",
               "test_trained_liar.py", "test_models.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(_SLOW_FIRST)))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """After each test module, drop JAX's compiled programs (``jax.clear_caches``).

  Every XLA:CPU executable keeps several memory mappings for its code, and JAX's caches keep
  every executable a process compiled. An xdist worker runs hundreds of modules: one was measured
  at 56,960 mappings late in a CI run, against Linux's default limit of 65,530
  (``vm.max_map_count``). Past it, a mapping fails inside LLVM and the worker segfaults in
  ``backend_compile`` (the crashes of 2026-12-06 and -07, in whichever test came next; every test
  passed alone). A module's programs are not reused by the next module (``--dist loadfile``), so
  nothing is recompiled that would not be anyway."""
  yield
  _log_mappings("before")
  jax.clear_caches()
  gc.collect()
  _log_mappings("after")


def _log_mappings(when: str) -> None:
  """With ``AMP_DEBATE_TEST_MAPS_LOG=<file>``, appends this process's memory mappings (Linux)."""
  path = os.environ.get("AMP_DEBATE_TEST_MAPS_LOG", "")
  if path and os.path.exists("/proc/self/maps"):
    with open("/proc/self/maps") as maps:
      count = sum(1 for _ in maps)
    with open(path, "a") as f:
      f.write(f"{os.getpid()} {when} {count}\n")
