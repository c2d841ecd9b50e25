"""Test setup: 8 simulated CPU devices and a persistent XLA compilation cache.

Both are environment variables set before JAX initialises, so subprocesses started by tests
(the CLI, resume and multi-process tests) inherit them. The cache (``<repo>/.jax_cache/<worker>``,
git-ignored)
lets tests that compile the same program, in any process, compile it once: most of this suite's time
is XLA compilation on a 2-core CPU. A clean clone (CI) starts with an empty cache.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# One cache per xdist worker (and one for a run without xdist): two workers reading and writing one
# cache directory at once crashed a worker with a segfault while it read an executable another was
# writing (seen twice on the 2-core machine, once leaving the run hung). A worker's subprocesses
# share its cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   ".jax_cache", os.environ.get("PYTEST_XDIST_WORKER", "main")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

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
