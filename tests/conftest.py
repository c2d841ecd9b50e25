"""Test setup: 8 simulated CPU devices and a persistent XLA compilation cache.

Both are environment variables set before JAX initialises, so subprocesses started by tests
(the CLI, resume and multi-process tests) inherit them. The cache (``<repo>/.jax_cache``, git-ignored)
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
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
