"""xtf_kernels: fused token-level loss kernels and token filtering for LLM fine-tuning.

The three core ops compute the lm_head projection and the loss together in chunks, so the
[tokens x vocab] logits tensor never exists:

- :func:`linear_cross_entropy`: masked / weighted cross-entropy; dropped tokens cost no compute.
- :func:`token_logprobs`: per-token log p(target), entropy and log-sum-exp.
- :func:`influence_delta`: per-token logp_ref - logp_base of two models.

``import xtf_kernels`` needs only torch; Triton, the compiled CUDA extension and transformers are
imported on first use of the feature that needs them.
"""

from __future__ import annotations

import importlib

from .errors import BackendUnavailableError
from .errors import XtfError
from .functional import LinearCrossEntropyOutput
from .functional import TokenLogprobs
from .functional import influence_delta
from .functional import linear_cross_entropy
from .functional import token_logprobs
from .nn import LinearCrossEntropyLoss

__version__ = "0.1.0"

# Public names living in modules that pull optional dependencies, resolved on first attribute access.
_LAZY = {
    "attention_received": "xtf_kernels.attention",
    "apply_xtf_kernels": "xtf_kernels.integrations.transformers",
    "select": "xtf_kernels.select",
    "datasets": "xtf_kernels.datasets",
    "fidelity": "xtf_kernels.fidelity",
    "methods": "xtf_kernels.methods",
    "pipeline": "xtf_kernels.pipeline",
}

__all__ = [
    "BackendUnavailableError",
    "LinearCrossEntropyLoss",
    "LinearCrossEntropyOutput",
    "TokenLogprobs",
    "XtfError",
    "influence_delta",
    "linear_cross_entropy",
    "token_logprobs",
    *_LAZY,
]


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'xtf_kernels' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
