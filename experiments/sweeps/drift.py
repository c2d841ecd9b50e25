"""The drift study's runs: amplification, then a hybrid fine-tune of it and a control.

  python -m experiments.drift_study --workdir=workdir/drift_study   # the runs, then the drift
  python -m amp_debate.sweep --sweep=experiments/sweeps/drift.py --workdir=workdir/drift_study
      # the first stage alone

Runs of ``experiments/configs/default.py:task=permutation,mode=<mode>,quickstart`` (the README
quick start's task and model), evaluated only at the end (no self-play debates in it) on the eval
set built under the workdir, with a checkpoint at the last step, named:
  amplification             stage=base: mode=amplification from scratch, ``steps`` steps;
  hybrid_finetune           stage=finetune: mode=hybrid to ``steps + finetune_steps``
                            (resume_allow_unsafe: it resumes amplification's checkpoints);
  amplification_continued   stage=finetune: mode=amplification to the same step (the control).
The fine-tunes start from copies of amplification's checkpoints (optimiser state and step RNG
included, as a resume does): ``experiments/drift_study.py`` copies them between the stages, so
run ``stage=finetune`` through it. A finished run is not rerun; the study refuses one trained to
other steps (use a new workdir).

``arg``: ``stage`` (base, the default, or finetune), ``steps`` (200), ``finetune_steps`` (200).
"""

from amp_debate import options

CONFIG = "experiments/configs/default.py:task=permutation,quickstart"
# Every run: evaluation only at its end, without debates; no best-checkpoint tracking.
OVERRIDES = {"eval.every": 0, "eval.debates": False, "checkpoint.best_metric": ""}
DEFAULTS = {"stage": "base", "steps": 200, "finetune_steps": 200}


def parse(arg: str = "") -> dict:
  """The study's sizes (``DEFAULTS`` updated from ``arg``)."""
  sizes = dict(DEFAULTS, **options.parse(arg, keys=tuple(DEFAULTS), what="drift sweep arg"))
  if sizes["stage"] not in ("base", "finetune"):
    raise ValueError(f"stage={sizes['stage']!r} is not one of base, finetune")
  if sizes["steps"] < 1 or sizes["finetune_steps"] < 1:
    raise ValueError("steps and finetune_steps must be >= 1")
  return sizes


def _run(name: str, mode: str, steps: int, **changes) -> dict:
  return {"name": name, "mode": mode, "num_steps": steps, "checkpoint.every": steps, **OVERRIDES,
          "eval.data_dir": "{workdir}/eval_data", **changes}


def get_sweep(arg: str = ""):
  s = parse(arg)
  total = s["steps"] + s["finetune_steps"]
  if s["stage"] == "base":
    return [_run("amplification", "amplification", s["steps"])]
  return [_run("hybrid_finetune", "hybrid", total, resume_allow_unsafe=True),
          _run("amplification_continued", "amplification", total)]
