"""Documents to token ids with per-token kinds: the ground truth of every noise kind, token by token.

Chat documents are ``<|bos|> <|user|> question <|assistant|> response <|eos|>``; plain text is
``<|bos|> text <|eos|>``. Segments are tokenised one by one and concatenated, so a token's kind is the kind
of the segment it came from (:data:`~.text.KINDS` codes, int8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..samples import IGNORE_INDEX
from ..samples import TokenizedSample
from .text import KIND_CODE
from .text import NOISE_KINDS
from .text import Document
from .tokenizer import MiniatureTokenizer


@dataclass(frozen=True)
class EncodedDocument:
    """sample: ids and labels (``noise_mask`` = tokens of the harmful kinds :data:`~.text.NOISE_KINDS`);
    kinds: (L,) int8 kind code of every token; prompt_length: tokens before the response."""

    sample: TokenizedSample
    kinds: torch.Tensor
    prompt_length: int


def prompt_ids(document: Document, tokenizer: MiniatureTokenizer) -> list[int]:
    """What a model is given to answer ``document``'s question: ``<|bos|> <|user|> question <|assistant|>``."""
    if document.question is None:
        raise ValueError("a plain-text document has no prompt")
    ids = [tokenizer.bos_token_id, tokenizer.user_token_id]
    for text, _kind in document.question:
        ids += tokenizer.encode(text)
    return ids + [tokenizer.assistant_token_id]


def encode_document(document: Document, tokenizer: MiniatureTokenizer, *, label_prompt: bool) -> EncodedDocument:
    """Ids, labels and kinds of ``document``; ``label_prompt`` labels every token (pretraining) instead of the
    response and eos only (SFT)."""
    head = prompt_ids(document, tokenizer) if document.question is not None else [tokenizer.bos_token_id]
    ids, kinds = list(head), [KIND_CODE["clean"]] * len(head)
    for text, kind in document.response:
        piece = tokenizer.encode(text)
        ids += piece
        kinds += [KIND_CODE[kind]] * len(piece)
    ids.append(tokenizer.eos_token_id)
    kinds.append(KIND_CODE["eos"])
    input_ids = torch.tensor(ids, dtype=torch.int64)
    labels = input_ids.clone()
    if not label_prompt:
        labels[: len(head)] = IGNORE_INDEX
    kind_tensor = torch.tensor(kinds, dtype=torch.int8)
    noise = torch.zeros(len(ids), dtype=torch.bool)
    for kind in NOISE_KINDS:
        noise |= kind_tensor == KIND_CODE[kind]
    return EncodedDocument(TokenizedSample(input_ids, labels, noise), kind_tensor, len(head))
