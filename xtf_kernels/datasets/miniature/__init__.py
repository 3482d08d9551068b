"""A benchmark in miniature that resembles the token filters' papers' regime, with known ground truth.

A byte-level BPE tokenizer (~2,000 pieces, chat special tokens) and a ~1M-parameter Llama-config base
pretrained on generated stories, web text, fact Q&A and arithmetic in the chat template (cached on disk);
an SFT set of harder two-step problems in the same template with token noise of several kinds, each with
its own ground truth (wrong numbers, off-domain sentences, garbled artefacts; harmless boilerplate apart).

::

    from xtf_kernels.datasets.miniature import BaseConfig, load_base, make_sft
    base = load_base(BaseConfig())                       # built once (4-6 minutes on a CPU core), then cached
    sft = make_sft(base.tokenizer, 1200, noise=0.15, seed=0)
    sft.samples[0].noise_mask, sft.kinds[0]              # (L,) bool harmful noise, (L,) int8 kind codes
"""

from __future__ import annotations

from .base import Base
from .base import BaseConfig
from .base import build_base
from .base import default_cache_dir
from .base import load_base
from .encoding import EncodedDocument
from .encoding import encode_document
from .encoding import prompt_ids
from .evaluation import follows_format
from .evaluation import generate
from .evaluation import noise_in
from .evaluation import parse_answer
from .evaluation import retention
from .evaluation import score_responses
from .noise import corrupt
from .noise import inject_noise
from .sft import HeldOut
from .sft import MiniatureSFT
from .sft import make_heldout
from .sft import make_sft
from .text import KIND_CODE
from .text import KINDS
from .text import NOISE_KINDS
from .text import PROTECTED_KINDS
from .text import Document
from .tokenizer import SPECIAL_TOKENS
from .tokenizer import MiniatureTokenizer

__all__ = [
    "KINDS",
    "KIND_CODE",
    "NOISE_KINDS",
    "PROTECTED_KINDS",
    "SPECIAL_TOKENS",
    "Base",
    "BaseConfig",
    "Document",
    "EncodedDocument",
    "HeldOut",
    "MiniatureSFT",
    "MiniatureTokenizer",
    "build_base",
    "corrupt",
    "default_cache_dir",
    "encode_document",
    "follows_format",
    "generate",
    "inject_noise",
    "load_base",
    "make_heldout",
    "make_sft",
    "noise_in",
    "parse_answer",
    "prompt_ids",
    "retention",
    "score_responses",
]
