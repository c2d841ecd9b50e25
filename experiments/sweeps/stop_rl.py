"""Issue 28, item 5: RL credit for the learned stop in pure debate (λ_sup = 0, where nothing else
trains the stop). The stop is on in every arm; arms: no RL credit (the control: in pure debate the
stop never fires, ``learned_stop`` sweep), and ``step.stop_cost`` 0.05 and 0.5 (each decision to go
on earns 1 if that changed the verdict, minus the cost per argument made after it; stopping
earns 0: ``credit.stop_rewards``). With t_max 4 a decision at the root saves at most 2 arguments,
so going on pays where P(verdict changes) > about 2 x cost: a low cost should keep debates going,
a high one should stop them at the root. Two seeds, the quick start's 600 steps.

  python -m amp_debate.sweep --sweep=experiments/sweeps/stop_rl.py \
      --config=experiments/configs/default.py:task=permutation,mode=debate,quickstart \
      --workdir=workdir/stop_rl --vmap=2
"""

from amp_debate import sweep


def get_sweep():
  return sweep.product({"debate.learned_stop": [True]}, {"step.stop_cost": [None, 0.05, 0.5]},
                       {"seed": [0, 1]})
