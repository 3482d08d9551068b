"""Embed text samples with a transformers model, so SFT datasets can be compared as (n, d) sample sets.

transformers is imported only inside :func:`load_text_encoder`; :func:`embed_texts` needs only a model and
a tokenizer object, so the numeric estimator never depends on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .._validation import check_int


def embed_texts(
    texts: Sequence[str],
    model,
    tokenizer,
    *,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
) -> torch.Tensor:
    """Mean of the last hidden states over each text's tokens -> (len(texts), hidden_size) float32.

    Args:
        texts: the samples, each a non-empty string (a chat sample rendered to one string).
        model: a transformers model, causal LM or encoder; a model with a head (``...ForCausalLM``) is run
            through its ``base_model``, so no [tokens x vocab] logits are built.
        tokenizer: its tokenizer (called as ``tokenizer(list_of_str, truncation=True, max_length=...)``).
        batch_size: texts per forward pass.
        max_length: tokens kept per text (truncation from the right).
        progress: show a tqdm bar.

    Returns:
        float32 tensor (len(texts), hidden_size) on the model's device, row i embedding texts[i].

    Texts are padded on the right here (whatever the tokenizer's padding side) and padding positions are
    masked out of both the attention and the mean, so a text's embedding does not depend on the batch it is
    in (up to matmul rounding). Texts are batched in order of token length to keep padding small.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        check_int(name, value)
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if len(texts) == 0:
        raise ValueError("texts is empty")

    token_ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    empty = [i for i, ids in enumerate(token_ids) if len(ids) == 0]
    if empty:
        raise ValueError(f"{len(empty)} text(s) have no tokens (first indices: {empty[:5]}); drop empty samples")

    backbone = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="embedding", unit="batch")

    embeddings = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for rows in batches:
                longest = max(len(token_ids[i]) for i in rows)
                input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), longest), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, : len(token_ids[i])] = torch.as_tensor(token_ids[i])
                    mask[r, : len(token_ids[i])] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                outputs = backbone(input_ids=input_ids, attention_mask=mask)
                hidden = getattr(outputs, "last_hidden_state", None)
                if hidden is None:
                    raise TypeError(
                        f"{type(backbone).__name__} returned no last_hidden_state; pass a transformers base model "
                        "or a model with a base_model (e.g. AutoModel / AutoModelForCausalLM)"
                    )
                weights = mask.unsqueeze(-1).to(torch.float32)
                pooled = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)
                if embeddings is None:
                    embeddings = torch.empty((len(texts), pooled.shape[1]), dtype=torch.float32, device=device)
                embeddings[torch.as_tensor(rows, device=device)] = pooled
    finally:
        model.train(was_training)
    return embeddings.clone()  # a normal tensor, usable outside inference mode (autograd in the estimator)


def load_text_encoder(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load (model, tokenizer) from a local transformers model directory, for :func:`embed_texts`.

    The model is loaded with ``AutoModel`` (the base model without an LM head, so a causal-LM checkpoint
    yields its decoder) from local files only, moved to ``device`` (and ``dtype`` when given), in eval mode.
    Raises FileNotFoundError / NotADirectoryError for a missing path, ImportError without transformers, and
    ValueError (one line, naming the path) when the directory holds no loadable model or tokenizer.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"model path {str(path)!r} is not a directory (a transformers save_pretrained dir)")
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("embedding text needs transformers: pip install 'xtf_kernels[hf]'") from exc
    # AutoModel drops a causal LM's head on purpose; silence the load report that lists it as unexpected.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError / ValueError / KeyError / ...
        raise ValueError(f"cannot load a transformers model from {str(path)!r}: {_one_line(exc)}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - as above
        raise ValueError(f"cannot load a tokenizer from {str(path)!r}: {_one_line(exc)}") from exc
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    return model.eval(), tokenizer


def _one_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
