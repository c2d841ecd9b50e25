"""experiments/sweep_study.py's collection: tables and plots copied, the debate-length plot drawn
from the runs' summaries, vmapped groups counted once in the wall time (no training here)."""

import json
import os

from experiments import sweep_study


def _fake_sweep(root, name):
  """A finished two-run sweep as the runner leaves it: one vmapped group of two runs."""
  src = os.path.join(root, name)
  for i, hist in enumerate(([0.0, 0.25, 0.75], [0.0, 1.0, 0.0])):
    run = os.path.join(src, f"run{i}")
    os.makedirs(run)
    with open(os.path.join(run, "summary.json"), "w") as f:
      json.dump({"index": i, "name": f"run{i}", "wall_s": 120.0, "vmap_group": [0, 1],
                 "debate_length_hist_end": hist}, f)
  with open(os.path.join(src, "results.md"), "w") as f:
    f.write("# table\n")
  with open(os.path.join(src, "results.csv"), "w") as f:
    f.write("run\n0\n1\n")
  return src


def test_collect_copies_and_counts_groups_once(tmp_path):
  workdir, out = str(tmp_path / "work"), str(tmp_path / "out")
  _fake_sweep(workdir, "anneal")
  cmd = sweep_study.command("anneal", workdir, 8)
  entry = sweep_study.collect("anneal", workdir, out, cmd, "workdir/sweep_study")
  assert entry["runs"] == 2 and entry["groups"] == 1
  assert entry["seconds"] == 120.0  # the group's wall time, not twice
  assert "--workdir=workdir/sweep_study/anneal" in entry["command"]
  assert "--vmap=8" in entry["command"]
  files = sorted(os.listdir(os.path.join(out, "anneal")))
  assert files == ["debate_length.png", "results.csv", "results.md"]
  with open(os.path.join(out, "anneal", "results.md")) as f:
    assert f.read().endswith("![debate_length](debate_length.png)\n")
  sweep_study.write_index([entry], out)
  with open(os.path.join(out, "README.md")) as f:
    index = f.read()
  assert "| [anneal](anneal/results.md) | 2 | 1 | 2.0 min |  |" in index  # no dataset column


def test_index_names_each_sweeps_eval_set_and_whether_it_is_held_out(tmp_path):
  out = str(tmp_path / "out")
  for name, version in (("anneal", "2.0.0"), ("target", "1.2.0")):
    os.makedirs(os.path.join(out, name))
    with open(os.path.join(out, name, "results.csv"), "w") as f:
      f.write(f"run,dataset\n0,amp_debate_eval/permutation:{version}\n1,amp_debate_eval/permutation:{version}\n")
  entries = [dict(name=n, runs=2, groups=1, seconds=60.0, command="c") for n in ("anneal", "target")]
  sweep_study.write_index(entries, out)
  with open(os.path.join(out, "README.md")) as f:
    index = f.read()
  assert "| `amp_debate_eval/permutation:2.0.0` | `c` |" in index
  assert "| `amp_debate_eval/permutation:1.2.0` (not held out) | `c` |" in index


def test_no_lengths_no_plot(tmp_path):
  assert not sweep_study.plot_lengths([{"name": "a", "index": 0}], str(tmp_path / "x.png"))
  assert not os.path.exists(tmp_path / "x.png")


def test_unknown_sweep_is_refused(tmp_path):
  try:
    sweep_study.command_line(["--sweeps=nope", f"--out={tmp_path}"])
  except SystemExit as e:
    assert "no sweep experiments/sweeps/nope.py" in str(e)
  else:
    raise AssertionError("an unknown sweep name was accepted")


def test_each_sweep_runs_on_its_own_base_config():
  """selfplay_leaf starts from the debate mode's defaults; the others from the quick start's."""
  leaf = sweep_study.command("selfplay_leaf", "/w", 3)
  assert "--config=experiments/configs/default.py:task=permutation,mode=debate,quickstart" in leaf
  assert f"--config={sweep_study.CONFIG}" in sweep_study.command("anneal", "/w", 3)
  assert "selfplay_leaf" in sweep_study.SWEEPS
