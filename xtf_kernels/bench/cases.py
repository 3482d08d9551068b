"""What one benchmark measurement is: a head shape, a mode, a dtype and the fraction of tokens kept.

Modes and the work they must do at least (the FLOP floor used for effective TFLOP/s, with N the tokens
*kept*, so a run that drops 40% of the tokens is credited with 60% of the work):

    fwd_bwd   loss forward + backward, gradients to hidden and weight   6 * N * H * V
    frozen    forward + backward with a frozen lm_head (no d_weight)    4 * N * H * V
    fwd       forward only under no_grad (per-token log-probs / loss)   2 * N * H * V
"""

from __future__ import annotations

import math
from dataclasses import asdict
from dataclasses import dataclass

import torch

from .models import model_head

MODES: tuple[str, ...] = ("fwd_bwd", "frozen", "fwd")
_FLOP_FACTOR = {"fwd_bwd": 6, "frozen": 4, "fwd": 2}
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(name: str) -> str:
    """Canonical dtype name for "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16"."""
    canonical = _DTYPE_ALIASES.get(name, name)
    if canonical not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES) + sorted(_DTYPE_ALIASES)}, got {name!r}")
    return canonical


@dataclass(frozen=True)
class Case:
    """One measured configuration.

    tokens N, hidden H, vocab V: hidden (N, H) and weight (V, H) in ``dtype``; ``keep`` in (0, 1] is the
    fraction of the N tokens that carry a loss (the rest are dropped through token_weights = 0 for xtf, or
    targets = ignore_index for the peers, which have no per-token weights); ``softcap`` s > 0 applies
    s * tanh(logits / s) (Gemma-2); ``model`` names the head the shape comes from ("" for explicit shapes).
    """

    tokens: int
    hidden: int
    vocab: int
    mode: str = "fwd_bwd"
    dtype: str = "bfloat16"
    keep: float = 1.0
    softcap: float | None = None
    model: str = ""

    def __post_init__(self):
        for name in ("tokens", "hidden", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        if not (isinstance(self.keep, (int, float)) and 0.0 < self.keep <= 1.0):
            raise ValueError(f"keep must be a fraction in (0, 1], got {self.keep!r}")
        if self.softcap is not None and not (math.isfinite(self.softcap) and self.softcap > 0):
            raise ValueError(f"softcap must be None or a positive number, got {self.softcap!r}")

    @classmethod
    def for_model(cls, model: str, tokens: int, **options) -> Case:
        """The case of a named head (:mod:`xtf_kernels.bench.models`); its softcap unless overridden."""
        head = model_head(model)
        options.setdefault("softcap", head.softcap)
        return cls(tokens=tokens, hidden=head.hidden, vocab=head.vocab, model=head.name, **options)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def kept_tokens(self) -> int:
        """round(keep * N), at least 1: the rows that carry a loss."""
        return max(1, round(self.keep * self.tokens))

    @property
    def flops(self) -> int:
        """The FLOP floor of this case (see the module docstring), counting kept tokens only."""
        return _FLOP_FACTOR[self.mode] * self.kept_tokens * self.hidden * self.vocab

    @property
    def label(self) -> str:
        head = self.model or "custom"
        keep = f" keep {self.keep:.0%}" if self.keep < 1.0 else ""
        cap = f" softcap {self.softcap:g}" if self.softcap else ""
        return f"{head} {self.tokens}x{self.hidden}x{self.vocab} {self.dtype} {self.mode}{keep}{cap}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Case:
        return cls(**data)
