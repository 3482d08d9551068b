"""The miniature's SFT pool (two-step problems with noise of several kinds) and its clean held-out sets.

Every set is a pure function of its seed (``random.Random`` streams named by role, so roles never share a
stream); held-out problems never share a question with the pool they are compared against.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..samples import TokenizedSample
from .encoding import encode_document
from .noise import inject_noise
from .text import KIND_CODE
from .text import NOISE_KINDS
from .text import Document
from .text import fact_question
from .text import one_step_problem
from .text import two_step_problem
from .tokenizer import MiniatureTokenizer

# Share of SFT responses opened / closed with boilerplate (each side), in every pool whatever its noise level:
# harmless redundancy, counted apart from the harmful kinds.
BOILERPLATE_RATE = 0.15


@dataclass(frozen=True)
class MiniatureSFT:
    """documents: the (possibly corrupted) problems; samples: their tokens (``noise_mask`` = harmful kinds);
    kinds: (L,) int8 kind code per token of each sample (:data:`~.text.KINDS`)."""

    documents: list[Document]
    samples: list[TokenizedSample]
    kinds: list[torch.Tensor]

    def response_tokens(self) -> int:
        return sum(int(s.response_mask.sum()) for s in self.samples)

    def kind_fraction(self, kind: str) -> float:
        """Share of the response tokens that are of ``kind``."""
        code = KIND_CODE[kind]
        hits = sum(int((k == code)[s.response_mask].sum()) for s, k in zip(self.samples, self.kinds))
        return hits / max(1, self.response_tokens())


def _problems(n: int, rng: random.Random, exclude: set[str]) -> list[Document]:
    out: list[Document] = []
    seen = set(exclude)
    while len(out) < n:
        document = two_step_problem(rng)
        if document.prompt_text not in seen:
            seen.add(document.prompt_text)
            out.append(document)
    return out


def make_sft(tokenizer: MiniatureTokenizer, n: int, *, noise: float, seed: int, exclude: set[str] | None = None,
             noise_kinds: tuple[str, ...] = NOISE_KINDS) -> MiniatureSFT:
    """``n`` two-step problems with boilerplate, then harmful noise until it is ``noise`` of the response tokens."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(f"miniature-sft-{seed}")
    documents = []
    for document in _problems(n, rng, exclude or set()):
        if rng.random() < 2 * BOILERPLATE_RATE:
            side = rng.random() < 0.5
            document = two_step_with_boilerplate(document, rng, opener=side)
        documents.append(document)
    documents = inject_noise(documents, noise, tokenizer, random.Random(f"miniature-noise-{seed}"), noise_kinds)
    encoded = [encode_document(d, tokenizer, label_prompt=False) for d in documents]
    return MiniatureSFT(documents, [e.sample for e in encoded], [e.kinds for e in encoded])


def two_step_with_boilerplate(document: Document, rng: random.Random, *, opener: bool) -> Document:
    from . import world

    if opener:
        response = ((" " + rng.choice(world.OPENERS), "boilerplate"), *document.response)
    else:
        response = (*document.response, (" " + rng.choice(world.CLOSERS), "boilerplate"))
    return Document(document.question, response, document.answer, document.kind)


@dataclass(frozen=True)
class HeldOut:
    """problems: clean two-step problems (exact match, format, noise reappearing, clean NLL);
    one_step / facts: pretraining tasks (retention)."""

    problems: list[Document]
    one_step: list[Document]
    facts: list[Document]

    def samples(self, tokenizer: MiniatureTokenizer) -> list[TokenizedSample]:
        """The clean problems as SFT samples (NLL on clean held-out responses)."""
        return [encode_document(d, tokenizer, label_prompt=False).sample for d in self.problems]


def make_heldout(n: int, *, seed: int, exclude: set[str], retention: int = 60) -> HeldOut:
    """``n`` clean problems whose questions are not in ``exclude``, and ``retention`` of each pretraining task."""
    rng = random.Random(f"miniature-heldout-{seed}")
    problems = _problems(n, rng, exclude)
    one_step = [one_step_problem(rng) for _ in range(retention)]
    facts = [fact_question(rng) for _ in range(retention)]
    return HeldOut(problems, one_step, facts)
