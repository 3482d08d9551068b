"""Tokenised SFT samples, a synthetic noisy arithmetic SFT set and tiny causal LMs (tests, demo, benchmarks).

Data in (used by :mod:`xtf_kernels.pipeline` and :mod:`xtf_kernels.methods`):
- :class:`TokenizedSample`, :class:`SampleSource` / :func:`as_source` (lists, datasets, JSONL, text +
  tokenizer), :func:`collate` into a right-padded :class:`Batch`.

The synthetic task (no download, a pure function of the seed)::

    from xtf_kernels.datasets import make_arithmetic_sft, make_problems, tiny_causal_lm, exact_match_accuracy

    data = make_arithmetic_sft(2000, noise_fraction=0.2, seed=0)   # data.samples[i].noise_mask = ground truth
    model = tiny_causal_lm("llama", vocab_size=len(data.tokenizer))
    held_out = make_problems(200, seed=1000)
    exact_match_accuracy(model, data.tokenizer, held_out)          # greedy decoding, "The answer is N ."

``data.tokenizer.to_transformers()`` gives the same tokenizer as a ``PreTrainedTokenizerFast`` to save next
to a model (``save_pretrained``) for ``xtf score``.
"""

from __future__ import annotations

from .arithmetic import ArithmeticProblem
from .arithmetic import ArithmeticSFT
from .arithmetic import arithmetic_tokenizer
from .arithmetic import make_arithmetic_sft
from .arithmetic import make_problems
from .evaluation import exact_match_accuracy
from .evaluation import greedy_responses
from .evaluation import parse_answer
from .samples import IGNORE_INDEX
from .samples import Batch
from .samples import SampleSource
from .samples import SFTCollator
from .samples import TokenizedSample
from .samples import as_source
from .samples import batches
from .samples import collate
from .samples import samples_to_records
from .tiny_models import tiny_causal_lm
from .tokenizer import ArithmeticTokenizer

__all__ = [
    "IGNORE_INDEX",
    "ArithmeticProblem",
    "ArithmeticSFT",
    "ArithmeticTokenizer",
    "Batch",
    "SFTCollator",
    "SampleSource",
    "TokenizedSample",
    "arithmetic_tokenizer",
    "as_source",
    "batches",
    "collate",
    "exact_match_accuracy",
    "greedy_responses",
    "make_arithmetic_sft",
    "make_problems",
    "parse_answer",
    "samples_to_records",
    "tiny_causal_lm",
]
