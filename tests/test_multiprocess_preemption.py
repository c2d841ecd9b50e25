"""Multi-process runs of the trainer (2 CPU processes on loopback, launch/local.sh): SIGTERM makes
every process save at the same step, and rerunning the same command resumes there and finishes;
and how ``initialize_distributed`` calls ``jax.distributed.initialize``."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import pytest

import tiny
from amp_debate.train import metrics_io
from amp_debate.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, ".jax_cache", "eval_data")
STEPS = 40
TIMEOUT_S = 240


def _launch(workdir, **kwargs):
  """``launch/local.sh 2`` running the tiny supervised run (4 CPU devices per process)."""
  config = tiny.config("supervised", STEPS, eval__examples_per_difficulty=16, eval__batch_size=16,
                       eval__every=0, eval__debates=False, eval__data_dir=DATA_DIR,
                       checkpoint__every=1000)
  flags = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "PYTHON": sys.executable,
         "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
  cmd = ["bash", os.path.join(REPO, "launch", "local.sh"), "2", f"--workdir={workdir}",
         *tiny.cli_args(config)]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)


def _outputs(proc, workdir):
  """(exit code, [process 0's output, process 1's log]) once ``proc`` has ended."""
  try:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    pytest.fail(f"launch/local.sh ran over {TIMEOUT_S} s:\n{out[-3000:]}")
  log = os.path.join(workdir, "process_1.log")
  return proc.returncode, [out, open(log).read() if os.path.exists(log) else ""]


def _saved_steps(outputs):
  return [re.findall(r"SIGTERM: saved step (\d+)", text) for text in outputs]


def test_sigterm_saves_every_process_at_one_step_and_a_rerun_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _launch(workdir, start_new_session=True)  # its own group: a timeout kills all of it
  log = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + TIMEOUT_S
  while time.monotonic() < deadline and proc.poll() is None:  # wait for the first steps
    if os.path.exists(log) and len(metrics_io.read_jsonl(log)) >= 3:
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[0][-3000:]
  proc.send_signal(signal.SIGTERM)  # local.sh passes it on to both processes
  code, outputs = _outputs(proc, workdir)
  assert code == 0, "\n".join(o[-3000:] for o in outputs)
  saved = _saved_steps(outputs)
  assert len(saved[0]) == 1 and saved[0] == saved[1], saved  # one save, the same step in both
  step = int(saved[0][0])
  assert 3 <= step < STEPS
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [step]
  assert not os.path.exists(os.path.join(workdir, "results.md"))

  code, outputs = _outputs(_launch(workdir, start_new_session=True), workdir)
  assert code == 0, "\n".join(o[-3000:] for o in outputs)
  for text in outputs:
    assert f"Resumed from step {step} " in text
  assert _saved_steps(outputs) == [[], []]
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [step, STEPS]
  assert "40 steps; held-out greedy accuracy" in outputs[0]
  assert os.path.exists(os.path.join(workdir, "results.md"))
  logged = [row["step"] for row in metrics_io.read_jsonl(log)]
  assert logged[-1] == STEPS and sorted(set(logged)) == list(range(1, STEPS + 1))


@pytest.mark.parametrize("env, expected", [
    ({}, {}),  # on a TPU VM or under SLURM: JAX detects the processes itself
    ({"AMP_DEBATE_NUM_PROCESSES": "2", "AMP_DEBATE_PROCESS_ID": "1"},
     {"num_processes": 2, "process_id": 1}),
])
def test_initialize_distributed_arguments(monkeypatch, env, expected):
  for name in ("AMP_DEBATE_NUM_PROCESSES", "AMP_DEBATE_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  trainer.initialize_distributed()
  assert calls == [expected]


def test_initialize_distributed_refuses_half_the_variables(monkeypatch):
  monkeypatch.setenv("AMP_DEBATE_NUM_PROCESSES", "2")
  monkeypatch.delenv("AMP_DEBATE_PROCESS_ID", raising=False)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: pytest.fail("called"))
  with pytest.raises(ValueError, match="AMP_DEBATE_NUM_PROCESSES is set but not "
                                       "AMP_DEBATE_PROCESS_ID"):
    trainer.initialize_distributed()
