"""The procedure's ablation on the quick-start task: which of amplification and debate does what.

  python -m experiments.ablation --workdir=workdir/ablation   # this sweep, then the tables
  python -m amp_debate.sweep --sweep=experiments/sweeps/ablation.py --workdir=workdir/ablation

Main settings (``SETTINGS``, seeds 0..seeds-1), each a mode at a call probability of
``experiments/configs/default.py:task=permutation,mode=M,quickstart``:
  hybrid                     debate RL + distillation (the README main job)
  amplification              distillation toward Amp′(H, M_target) only (force_stop_after=1)
  supervised                 the ground-truth upper bound (call_prob unused)
  debate                     debate RL only (λ_sup = 0, call_prob = 0: claims are M's own)
  amplification, hybrid at debate.call_prob = 0.3   (about a third of the human calls)
  hybrid without RL          hybrid's debates and targets, λ_rl = 0 (the control for hybrid vs
                             amplification: is it the debate's gradient or the extra targets?)
and the mechanism settings (``MECHANISMS``, seeds 0..mechanism_seeds-1), each against the main
setting it changes. Seed-major: every setting's seed 0 first, so an interrupted ablation covers
every setting.

``arg``: ``seeds=N`` (default 3), ``mechanism_seeds=N`` (default 1; 0: none), ``steps=N``
(num_steps of every run; 0, the default: the config's 600).
"""

from amp_debate import options

CONFIG = "experiments/configs/default.py:task=permutation,quickstart"
FIXED = ("seed", "num_steps")  # overrides that are not part of a setting


def _setting(mode: str, call_prob: float, tag: str = "", **changes) -> dict:
  """One row of the table: its name (``<mode>_p<call_prob>[_<tag>]``, the ``setting`` of its
  records), label, call probability and the overrides that make it."""
  return {"name": f"{mode}_p{call_prob}" + (f"_{tag}" if tag else ""),
          "label": mode + (f" ({tag.replace('_', ' ')})" if tag else ""),
          "call_prob": call_prob, "changes": changes,
          "overrides": {"mode": mode, "debate.call_prob": call_prob, **changes}}


SETTINGS = (
    _setting("hybrid", 1.0), _setting("amplification", 1.0), _setting("supervised", 1.0),
    _setting("debate", 0.0), _setting("amplification", 0.3), _setting("hybrid", 0.3),
    # The control for "hybrid beats amplification": the same debates and distillation targets
    # (both sides' computations, descended-to nodes: about twice amplification's targets per
    # question) without the debate's policy gradient.
    _setting("hybrid", 1.0, "no_rl", **{"combination.weights.rl": 0.0,
                                        "combination.weights_end.rl": 0.0}),
)
# Each learning mechanism against the main setting it changes: does it move the behaviour
# DESIGN.md says it should?
MECHANISMS = (
    # The learned stop: shorter debates (fewer leaf and support calls) where the amplified judge
    # already gives the verdict the full debate would reach. Compare with hybrid p=1.
    _setting("hybrid", 1.0, "learned_stop", **{"debate.learned_stop": True}),
    # Assigned claims: without them false claims are rare in self-play and refuting them is never
    # practised. Compare the honesty columns with hybrid p=0.3.
    _setting("hybrid", 0.3, "no_assigned", **{"debate.assign_prob": 0.0}),
    # The shaped combination: debate reward minus beta * (disagreement with Amp'), no distillation
    # gradient; against the same with beta = 0 (pure debate at p = 0.3).
    _setting("hybrid", 0.3, "shaped_beta0.5", **{"combination.kind": "shaped",
                                                 "combination.beta": 0.5}),
    _setting("hybrid", 0.3, "shaped_beta0", **{"combination.kind": "shaped",
                                               "combination.beta": 0.0}),
    # The entropy bonus: pure debate collapses onto one answer per role (every game a draw, no
    # gradient); does keeping the policy's entropy up let the debate signal teach M?
    _setting("debate", 0.0, "entropy0.1", **{"step.entropy_coef": 0.1}),
)


def parse(arg: str = "") -> dict:
  """The sweep's sizes: {"seeds", "mechanism_seeds", "steps"} from ``arg``."""
  sizes = {"seeds": 3, "mechanism_seeds": 1, "steps": 0}
  sizes.update(options.parse(arg, keys=tuple(sizes), what="ablation sweep arg"))
  return sizes


def setting_of(overrides: dict) -> dict | None:
  """The setting (of ``SETTINGS`` or ``MECHANISMS``) a run's overrides make, None if none."""
  own = {k: v for k, v in overrides.items() if k not in FIXED}
  return next((s for s in SETTINGS + MECHANISMS if s["overrides"] == own), None)


def get_sweep(arg: str = ""):
  sizes = parse(arg)
  steps = {"num_steps": sizes["steps"]} if sizes["steps"] else {}
  plan = [(seed, s) for seed in range(sizes["seeds"]) for s in SETTINGS]
  plan += [(seed, s) for seed in range(sizes["mechanism_seeds"]) for s in MECHANISMS]
  return [{**s["overrides"], "seed": seed, **steps} for seed, s in plan]
