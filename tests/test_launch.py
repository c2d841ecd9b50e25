"""The launch scripts under --dry-run: the exact commands they would run (no gcloud, sbatch or
cluster needed; dry runs never call them), their usage headers, and one-line errors."""

import os
import re
import shlex
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("local.sh", "tpu_pod.sh", "slurm.sh", "slurm.sbatch", "sweep_cluster.sh")
CONFIG = "experiments/configs/default.py:task=permutation,quickstart"


TOOLS = ("basename", "dirname", "mkdir", "realpath", "sed", "seq")  # what the scripts call
_SAFE_PATH = []


@pytest.fixture(scope="module", autouse=True)
def _safe_path(tmp_path_factory):
  """A PATH folder with only TOOLS: never gcloud or sbatch (this machine may have a real gcloud,
  which a test must never call; a dry run that called one would fail here)."""
  folder = tmp_path_factory.mktemp("bin")
  for tool in TOOLS:
    os.symlink(shutil.which(tool, path="/usr/bin:/bin"), folder / tool)
  _SAFE_PATH[:] = [str(folder)]
  yield


def _run(script, *args, env=None, check=True):
  """(stdout, stderr, exit code) of ``bash launch/<script> args`` with no cluster tools on PATH."""
  proc = subprocess.run(["/bin/bash", os.path.join("launch", script), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=30,
                        env={"PATH": _SAFE_PATH[0], "HOME": os.environ.get("HOME", "/tmp"),
                             **(env or {})})
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc.stdout, proc.stderr, proc.returncode


def _commands(stdout):
  """The printed command lines ("+ ..."), each split into words as a shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _remote(words):
  """The --command= of a gcloud ssh command line."""
  (command,) = [w[len("--command="):] for w in words if w.startswith("--command=")]
  return command


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_a_usage_header_and_strict_mode(script):
  text = open(os.path.join(REPO, "launch", script)).read()
  header = text.split("\n\n")[0]
  assert text.startswith("#!/usr/bin/env bash\n# ")
  assert f"launch/{script}" in header, f"{script}: the header shows no usage line"
  assert "set -euo pipefail" in text


TPU = ["--name=pod-a", "--zone=us-east5-a", "--accelerator=v5p-32", f"--config={CONFIG}",
       "--workdir=gs://my-bucket/runs/perm"]


def test_tpu_pod_dry_run_creates_installs_and_runs_on_every_worker():
  out, _, _ = _run("tpu_pod.sh", *TPU, "--spot", "--dry-run", "--", "--config.num_steps=100")
  commands = _commands(out)
  # The order: create, ship and install the code, mount, train, check for the results.
  steps = [c[4] if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] else " ".join(c[:2])
           for c in commands]
  assert steps == ["describe", "create", "git -C", "scp", "ssh", "ssh", "ssh", "ssh",
                   "gcloud storage"]
  create = commands[1]
  assert create[5:] == ["pod-a", "--zone=us-east5-a", "--accelerator-type=v5p-32",
                        "--version=tpu-ubuntu2204-base", "--spot"]
  ssh = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert ssh and all("--worker=all" in c and c[5] == "pod-a" for c in ssh)
  remotes = [_remote(c) for c in ssh]
  assert any("pip install" in r and "amp_debate[tpu]" in r for r in remotes)
  assert any("gcsfuse" in r and "my-bucket $HOME/gcs/my-bucket" in r for r in remotes)
  train = shlex.split(remotes[-1].split("&&")[-1])
  assert train == ["python3", "-m", "amp_debate.main", f"--config={CONFIG}",
                   "--workdir=$HOME/gcs/my-bucket/runs/perm", "--config.distributed=True",
                   "--config.num_steps=100"]
  scp = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]]
  assert len(scp) == 1 and "--worker=all" in scp[0]
  assert commands[-1] == ["gcloud", "storage", "ls", "gs://my-bucket/runs/perm/results.md"]
  assert "rerun" in out and "at most 3 times" in out


def test_tpu_pod_reuse_never_creates():
  out, _, _ = _run("tpu_pod.sh", *TPU[:2], f"--config={CONFIG}", "--workdir=gs://b/p", "--reuse",
                   "--max_restarts=5", "--dry-run")
  assert "tpu-vm create" not in out and "tpu-vm delete" not in out
  assert "at most 5 times" in out
  assert any("--config.distributed=True" in _remote(c) for c in _commands(out) if "ssh" in c)


@pytest.mark.parametrize("args, message", [
    (TPU[1:], "--name=NAME (the TPU VM) is required"),
    ([a for a in TPU if not a.startswith("--accelerator")], "--accelerator=TYPE"),
    (TPU[:-1] + ["--workdir=/local/dir"], "--workdir must be gs://BUCKET/PATH"),
    (TPU + ["--bogus"], "unknown option --bogus"),
])
def test_tpu_pod_bad_options_fail_with_one_line(args, message):
  out, err, code = _run("tpu_pod.sh", *args, "--dry-run", check=False)
  assert code == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("launch/tpu_pod.sh: error: ") and message in err


def test_tpu_pod_without_gcloud_fails_unless_dry_run():
  _, err, code = _run("tpu_pod.sh", *TPU, check=False)
  assert code == 2 and err == ("launch/tpu_pod.sh: error: gcloud not found on PATH (use --dry-run "
                               "to only print the commands)\n")


@pytest.mark.parametrize("layout, tasks, env_ids", [
    ("per-gpu", "4", None), ("per-node", "1", "JAX_LOCAL_DEVICE_IDS=0,1,2,3")])
def test_slurm_dry_run_prints_sbatch_and_srun(tmp_path, layout, tasks, env_ids):
  workdir = str(tmp_path / "run")
  out, _, _ = _run("slurm.sh", f"--config={CONFIG}", f"--workdir={workdir}", "--nodes=2",
                   "--gpus_per_node=4", f"--layout={layout}", "--partition=gpu",
                   "--time=04:00:00", "--dry-run", "--", "--config.num_steps=10")
  sbatch, srun = _commands(out)
  assert sbatch == ["sbatch", "--nodes=2", f"--ntasks-per-node={tasks}", "--gpus-per-node=4",
                    "--job-name=amp_debate", f"--output={workdir}/slurm-%j.out",
                    "--partition=gpu", "--time=04:00:00",
                    os.path.join(REPO, "launch", "slurm.sbatch"), f"--config={CONFIG}",
                    f"--workdir={workdir}", "--config.num_steps=10"]
  expected = ["srun", "--kill-on-bad-exit=1"] + (["env", env_ids] if env_ids else []) + [
      "python", "-m", "amp_debate.main", f"--config={CONFIG}", f"--workdir={workdir}",
      "--config.num_steps=10", "--config.distributed=True"]
  assert srun == expected
  assert not os.path.exists(workdir)  # a dry run creates nothing


def test_slurm_sbatch_requeues_and_signals_before_the_time_limit():
  text = open(os.path.join(REPO, "launch", "slurm.sbatch")).read()
  directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=?(\S*)", text, re.M))
  assert directives["requeue"] == "" and directives["signal"] == "TERM@120"
  assert directives["ntasks-per-node"] == directives["gpus-per-node"] == "8"  # per GPU
  assert 'scontrol requeue "$SLURM_JOB_ID"' in text


@pytest.mark.parametrize("args, message", [
    (["--workdir=/w"], "--config=FILE.py[:ARGS] is required"),
    ([f"--config={CONFIG}"], "--workdir=DIR"),
    ([f"--config={CONFIG}", "--workdir=/w", "--layout=per-rack"], "per-gpu or per-node"),
    ([f"--config={CONFIG}", "--workdir=/w", "--nodes=0"], "--nodes must be a positive integer"),
])
def test_slurm_bad_options_fail_with_one_line(args, message):
  out, err, code = _run("slurm.sh", *args, "--dry-run", check=False)
  assert code == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("launch/slurm.sh: error: ") and message in err


def test_slurm_and_sweep_without_sbatch_fail_unless_dry_run(tmp_path):
  for script, args in [("slurm.sh", [f"--config={CONFIG}", f"--workdir={tmp_path}/w"]),
                       ("sweep_cluster.sh", SWEEP + [f"--workdir={tmp_path}/w", "--count=2"])]:
    _, err, code = _run(script, *args, check=False)
    assert code == 2 and err == (f"launch/{script}: error: sbatch not found on PATH (use "
                                 "--dry-run to only print the commands)\n")


def test_slurm_sbatch_itself_needs_a_workdir():
  _, err, code = _run("slurm.sbatch", f"--config={CONFIG}", env={"AMP_DEBATE_DRY_RUN": "1"},
                      check=False)
  assert code == 2 and err == "launch/slurm.sbatch: error: --workdir=DIR (shared by all nodes) is required\n"


SWEEP = ["--sweep=experiments/sweeps/lr.py", f"--config={CONFIG}"]


def test_sweep_dry_run_submits_one_array_task_per_run(tmp_path):
  workdir = str(tmp_path / "sweep")
  out, _, _ = _run("sweep_cluster.sh", *SWEEP, f"--workdir={workdir}", "--count=6",
                   "--max_parallel=2", "--dry-run", "--", "--config.num_steps=5")
  (sbatch,) = _commands(out)  # --count given: the sweep module is never asked
  assert sbatch[0] == "sbatch" and "--array=0-5%2" in sbatch and "--requeue" in sbatch
  (wrap,) = [w[len("--wrap="):] for w in sbatch if w.startswith("--wrap=")]
  assert shlex.split(wrap) == ["python", "-m", "amp_debate.sweep", *SWEEP, f"--workdir={workdir}",
                               "--only=$SLURM_ARRAY_TASK_ID", "--config.num_steps=5"]
  assert f"--output={workdir}/sweep-%A_%a.out" in sbatch


def test_sweep_on_tpu_runs_each_run_on_every_worker():
  out, _, _ = _run("sweep_cluster.sh", "--tpu", "--name=vm", "--zone=z", *SWEEP,
                   "--workdir=$HOME/gcs/b/sweep", "--count=3", "--dry-run")
  commands = _commands(out)
  assert len(commands) == 3
  for i, c in enumerate(commands):
    assert c[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vm"] and "--worker=all" in c
    assert _remote(c).endswith(f"--workdir=$HOME/gcs/b/sweep --only={i}")


def test_sweep_asks_the_sweep_module_for_the_count_without_count(tmp_path):
  fake = tmp_path / "python"  # stands in for python: logs its arguments, prints a count of 4
  fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\necho 4\n")
  fake.chmod(0o755)
  out, _, _ = _run("sweep_cluster.sh", *SWEEP, "--workdir=/w", "--dry-run",
                   env={"PATH": f"{tmp_path}:{_SAFE_PATH[0]}"})
  assert (tmp_path / "calls").read_text() == f"-m amp_debate.sweep {' '.join(SWEEP)} --workdir=/w --count\n"
  count, sbatch = _commands(out)
  assert count[-1] == "--count" and "--array=0-3" in sbatch

  fake.write_text("#!/bin/sh\nexit 1\n")  # no sweep module: a one-line error
  out, err, code = _run("sweep_cluster.sh", *SWEEP, "--workdir=/w", "--dry-run", check=False,
                        env={"PATH": f"{tmp_path}:{_SAFE_PATH[0]}"})
  assert code == 2 and err.endswith("--count failed (give --count=N to skip it)\n")


@pytest.mark.parametrize("args, message", [
    (SWEEP[1:] + ["--workdir=/w", "--count=2"], "--sweep=experiments/sweeps/NAME.py is required"),
    (SWEEP + ["--workdir=/w", "--count=0"], "must be a positive integer, got '0'"),
    (SWEEP + ["--workdir=/w", "--count=2", "--tpu", "--zone=z"], "--tpu needs --name"),
])
def test_sweep_bad_options_fail_with_one_line(args, message):
  out, err, code = _run("sweep_cluster.sh", *args, "--dry-run", check=False)
  assert code == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("launch/sweep_cluster.sh: error: ") and message in err
