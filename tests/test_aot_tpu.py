"""benchmarks/aot_tpu.py: the TPU ahead-of-time compile (with libtpu, the optional ``aot`` extra)
and its one-line refusal without libtpu (CI: libtpu is not installed, only that test runs)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "aot_tpu.py")


def _env(**extra):
  """The suite's environment without its CPU-only settings (simulated devices, compile cache)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
  return {**env, "PYTHONPATH": REPO, **extra}


def test_without_libtpu_one_line_error():
  out = subprocess.run([sys.executable, SCRIPT, "--quick"], capture_output=True, text=True,
                       env=_env(AMP_DEBATE_AOT_NO_LIBTPU="1"), timeout=60)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr
  assert lines[0].startswith("aot_tpu.py: libtpu is not installed"), lines[0]
  assert "Traceback" not in out.stderr


def test_quick_compiles_for_tpu(tmp_path):
  pytest.importorskip("libtpu", reason="libtpu (the optional 'aot' extra) is not installed")
  out_md = tmp_path / "aot.md"
  out = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(out_md)],
                       capture_output=True, text=True, env=_env(), timeout=900)
  assert out.returncode == 0, out.stderr[-2000:]
  data = json.loads((tmp_path / "aot.json").read_text())
  assert data["meta"]["libtpu"]
  (result,) = data["results"]
  assert result["chips"] == 4 and (result["data"], result["fsdp"]) == (2, 2)
  (row,) = result["tried"]
  for key in ("argument", "output", "temp", "generated_code", "total", "flops"):
    assert row[key] > 0, key
  assert row["total"] < row["hbm"] == 16 * 2 ** 30
  assert row["fits"]
  assert "nothing ran on a TPU" in out_md.read_text()
