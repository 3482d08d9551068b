"""Token-scoring methods: XTF, Token Cleaning (fixed and self-evolving) and RHO-1 (methods.md).

- :class:`XTFScorer` / :class:`XTFConfig`: the three attributes RI, KN, TR and their union rule.
- :class:`TokenCleaningScorer` / :class:`TokenCleaningConfig`, :func:`token_cleaning` (fixed model),
  :func:`self_evolving_cleaning` (n parts, user-supplied training callback).
- :func:`rho1_loss` / :class:`Rho1Loss`: the selective loss of RHO-1 (:mod:`xtf_kernels.methods.rho1`).
- :class:`Safeguards`: protected tokens, per-sample and global caps on what a filter drops, and the
  whole-response option, shared by XTF and Token Cleaning (:mod:`xtf_kernels.methods.safeguards`);
  ``XTFConfig()`` is the safe configuration, :meth:`XTFConfig.paper` the paper-faithful one.
- :func:`score_samples` / :func:`filter_samples`: score and mask data in memory; the streaming, resumable
  version is :func:`xtf_kernels.pipeline.score_dataset`.
- :func:`sweep_threshold` / :class:`CalibrationSweep`: sweep one knob of a filter on a trusted dev set
  (drop rate against dev NLL / accuracy; ``xtf calibrate``).
- :func:`finetune`: a plain SFT loop on tokenised samples with the fused loss; :func:`lm_head_of` and
  :func:`final_hidden_states` give a transformers causal LM's head and last hidden states for the fused ops.

Scores are fp32 per token, aligned with ``input_ids``, NaN where not scored; ``dropped_by`` bit i set means
rule ``rule_names[i]`` dropped the token.
"""

from __future__ import annotations

from ._causal_lm import LMHead
from ._causal_lm import final_hidden_states
from ._causal_lm import lm_head_of
from .base import BatchScores
from .base import GlobalTopK
from .base import SampleScores
from .base import TokenScorer
from .base import filter_samples
from .base import score_samples
from .calibration import CalibrationSweep
from .calibration import sweep_threshold
from .finetune import causal_lm_loss
from .finetune import finetune
from .nll import mean_nll
from .nll import token_nll
from .rho1 import ExcessLossWindow
from .rho1 import Rho1Loss
from .rho1 import rho1_loss
from .safeguards import DropCapExceededError
from .safeguards import Safeguards
from .token_cleaning import NoReferenceGainError
from .token_cleaning import ReferenceCheck
from .token_cleaning import SelfEvolvingResult
from .token_cleaning import TokenCleaningConfig
from .token_cleaning import TokenCleaningScorer
from .token_cleaning import check_reference
from .token_cleaning import self_evolving_cleaning
from .token_cleaning import split_parts
from .token_cleaning import token_cleaning
from .xtf import XTFConfig
from .xtf import XTFScorer
from .xtf import task_relevance

__all__ = [
    "BatchScores",
    "CalibrationSweep",
    "ExcessLossWindow",
    "GlobalTopK",
    "LMHead",
    "DropCapExceededError",
    "NoReferenceGainError",
    "ReferenceCheck",
    "Rho1Loss",
    "Safeguards",
    "SampleScores",
    "SelfEvolvingResult",
    "TokenCleaningConfig",
    "TokenCleaningScorer",
    "TokenScorer",
    "XTFConfig",
    "XTFScorer",
    "causal_lm_loss",
    "check_reference",
    "filter_samples",
    "final_hidden_states",
    "finetune",
    "lm_head_of",
    "mean_nll",
    "rho1_loss",
    "score_samples",
    "self_evolving_cleaning",
    "split_parts",
    "sweep_threshold",
    "task_relevance",
    "token_cleaning",
    "token_nll",
]

