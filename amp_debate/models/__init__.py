"""Models: the policy/answerer transformer M (KV-cache sampling) and the judges.

``LanguageModel(preset("small", task.vocab_size, max_len))`` gives M as pure functions of its
parameters; see ``transformer`` for the padding, mask and cache conventions, ``config`` for the
sizes offered, ``partitioning`` for logical axis names and ``flops`` for utilisation helpers.
"""

from amp_debate.models.config import PRESETS, ModelConfig, preset
from amp_debate.models.flops import count_params, flops_per_token, param_count
from amp_debate.models.judges import ImageJudge, TranscriptJudge
from amp_debate.models.partitioning import (LOGICAL_AXIS_RULES, init_params, logical_axes,
                                            rules_for_mesh)
from amp_debate.models.transformer import KVCache, LanguageModel, Sample, Transformer

__all__ = [
    "ModelConfig", "PRESETS", "preset",
    "LanguageModel", "Transformer", "KVCache", "Sample",
    "TranscriptJudge", "ImageJudge",
    "LOGICAL_AXIS_RULES", "rules_for_mesh", "init_params", "logical_axes",
    "param_count", "count_params", "flops_per_token",
]
