"""A tiny word-level tokenizer for the synthetic arithmetic task; nothing is downloaded.

Text is split on whitespace and every number into single digits, so ``"Tom has 12 ."`` is
``["Tom", "has", "1", "2", "."]``. The vocabulary is fixed (see :mod:`xtf_kernels.datasets.arithmetic`
for the words), which keeps a model's embedding and lm_head at ~100 rows. :meth:`ArithmeticTokenizer.to_transformers`
builds the equivalent ``PreTrainedTokenizerFast`` in memory, so the same ids can be saved next to a model and
loaded back with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def split_words(text: str) -> list[str]:
    """Whitespace split, then every run of digits into single digits (matches the fast tokenizer's pre-tokenizer)."""
    pieces: list[str] = []
    for word in text.split():
        if word.isdigit():
            pieces.extend(word)
        else:
            pieces.append(word)
    return pieces


class ArithmeticTokenizer:
    """Word-level tokenizer over a fixed vocabulary.

    Ids 0..3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``; then the digits 0-9; then ``words`` in order.
    ``encode`` / ``decode`` follow the transformers signatures the pipeline calls
    (``encode(text, add_special_tokens=False) -> list[int]``), so this class and a transformers tokenizer are
    interchangeable there.

    Args:
        words: every other token (no duplicates, no whitespace inside a word, no all-digit word).
    """

    def __init__(self, words: Iterable[str]):
        words = list(words)
        vocab = [*SPECIAL_TOKENS, *"0123456789"]
        for word in words:
            if not isinstance(word, str) or not word or any(ch.isspace() for ch in word):
                raise ValueError(f"words must be non-empty strings without whitespace, got {word!r}")
            if word.isdigit():
                raise ValueError(f"words must not be numbers (digits are built in), got {word!r}")
        vocab.extend(words)
        if len(set(vocab)) != len(vocab):
            duplicates = sorted({w for w in vocab if vocab.count(w) > 1})
            raise ValueError(f"words contains duplicates or special tokens: {duplicates}")
        self.vocab: tuple[str, ...] = tuple(vocab)
        self.token_to_id: dict[str, int] = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_token_id = self.token_to_id[PAD]
        self.bos_token_id = self.token_to_id[BOS]
        self.eos_token_id = self.token_to_id[EOS]
        self.unk_token_id = self.token_to_id[UNK]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` (unknown words -> ``<unk>``); ``add_special_tokens`` wraps it in bos ... eos."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = [self.token_to_id.get(word, self.unk_token_id) for word in split_words(text)]
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self.vocab)})")
            out.append(self.vocab[i])
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Words joined by spaces, consecutive digits joined into numbers; ``encode(decode(x)) == x``."""
        text: list[str] = []
        previous_digit = False
        for token in self.convert_ids_to_tokens(ids):
            if skip_special_tokens and token in SPECIAL_TOKENS:
                previous_digit = False
                continue
            is_digit = token.isdigit()
            if text and not (is_digit and previous_digit):
                text.append(" ")
            text.append(token)
            previous_digit = is_digit
        return "".join(text)

    def to_transformers(self):
        """The same tokenizer as a ``transformers.PreTrainedTokenizerFast`` built in memory.

        Encodes every text to the same ids as :meth:`encode` (its decode spaces digits apart: "1 2").
        Needs the ``tokenizers`` and ``transformers`` packages (``pip install xtf_kernels[hf]``).
        """
        from tokenizers import Tokenizer
        from tokenizers import models
        from tokenizers import pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        backend = Tokenizer(models.WordLevel(dict(self.token_to_id), unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        )
