"""The miniature's byte-level BPE tokenizer, trained with the ``tokenizers`` library on generated text.

About 2,000 pieces: the 256 byte symbols, the chat special tokens (:data:`SPECIAL_TOKENS`) and merges
learned from pretraining text. Digits are split one per piece before the byte-level step (as Llama-3 and
Qwen split numbers into short digit groups), so arithmetic is done digit by digit and a wrong number differs
from a right one in its digit tokens only. Needs ``tokenizers`` (``pip install 'xtf_kernels[hf]'``).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence

PAD, BOS, EOS, USER, ASSISTANT = "<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, USER, ASSISTANT)  # ids 0..4, in this order


def _tokenizers():
    try:
        import tokenizers
    except ImportError as exc:
        raise ImportError("the miniature's tokenizer needs the tokenizers library: "
                          "pip install 'xtf_kernels[hf]'") from exc
    return tokenizers


class MiniatureTokenizer:
    """A trained ``tokenizers.Tokenizer`` with the signatures the package calls: ``encode(text,
    add_special_tokens=False) -> list[int]``, ``decode(ids) -> str``, ``bos_token_id`` / ``eos_token_id`` /
    ``pad_token_id``, ``len()``.

    Build with :meth:`train` or :meth:`from_json`; :meth:`to_json` is its exact serialisation.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"the special tokens {SPECIAL_TOKENS} must have ids 0..{len(SPECIAL_TOKENS) - 1}, "
                             f"got {ids}")
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.user_token_id, self.assistant_token_id = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2000) -> MiniatureTokenizer:
        """Train byte-level BPE with ``vocab_size`` pieces (special tokens and the 256 bytes included)."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
            raise ValueError(f"vocab_size must be an int >= 300 (256 bytes + specials + merges), got {vocab_size!r}")
        tk = _tokenizers()
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([
            tk.pre_tokenizers.Digits(individual_digits=True),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, text: str) -> MiniatureTokenizer:
        return cls(_tokenizers().Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of ``text`` (no special token is ever added: the chat template adds them explicitly)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, index: int) -> str:
        return self.tokenizer.id_to_token(index)

    def to_transformers(self):
        """The same tokenizer as a transformers ``PreTrainedTokenizerFast`` (to ``save_pretrained`` next to a model)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                       additional_special_tokens=[USER, ASSISTANT])
