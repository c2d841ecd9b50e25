"""Test setup: 8 simulated CPU devices, XLA at backend optimisation level 0, and no persistent
compilation cache.

All are environment variables set before JAX initialises, so subprocesses started by tests (the CLI,
resume and multi-process tests) inherit them.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# No persistent XLA compilation cache. Serialising an executable for it (``put_executable_and_time``)
# or reading one back segfaulted xdist workers inside jaxlib 0.10.2 on the 2-core machine, five
# times in the sessions of 2026-12-06 and -07 (test_group, test_overseer, test_drift, and CI
# stop 39, which then hung until its 90-minute limit); per-module and per-worker workarounds did not
# stop it. Each process compiles its own programs; within a process JAX's in-memory caches still
# serve repeats. Subprocesses inherit this variable.
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

# The slowest modules first. With ``--dist loadfile`` (setup.cfg) each module runs whole on one
# xdist worker; a long module scheduled last leaves the other worker idle for minutes (seen: the
# trainer tests, which xdist's default reordering by number of tests put last). Longest first,
# with ``--no-loadscope-reorder`` so xdist keeps this order, balances the two workers; the order
# of tests within a module is kept (a stable sort).
_SLOW_FIRST = ("test_trainer.py", "test_sharding.py", "test_step.py", "test_debate.py",
               "test_credit.py", "test_model_player.py", "test_models.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(_SLOW_FIRST)))
