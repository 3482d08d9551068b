"""Loading a local transformers causal LM and its tokenizer for scoring, with one-line errors.

Nothing is downloaded (``local_files_only=True``). ``dtype="auto"`` is bfloat16 on a CUDA device and float32
on the CPU, where bfloat16 matmuls are slow.
"""

from __future__ import annotations

import json
import os

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; "cuda" without a GPU is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no CUDA GPU")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}") from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("loading models needs transformers: pip install 'xtf_kernels[hf]'") from exc
    return transformers


def _one_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_model_dir(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"model path {path!r} is not a directory (a transformers save_pretrained folder)")


def load_causal_lm(path: str | os.PathLike, *, device: str = "auto", dtype: str = "auto"):
    """A transformers causal LM from a local folder, on ``device`` in ``dtype``, in eval mode.

    Raises FileNotFoundError / NotADirectoryError for a bad path, ImportError without transformers, and a
    one-line ValueError when the folder holds no transformers model or one that is not a causal LM.
    """
    path = os.fspath(path)
    check_model_dir(path)
    transformers = _transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError / ValueError / KeyError / ...
        raise ValueError(f"{path!r} holds no transformers model config: {_one_line(exc)}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{path!r} is not a causal LM: its model type {config.model_type!r} has no "
                         "AutoModelForCausalLM class")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                                  **{dtype_key: torch_dtype})
    except Exception as exc:  # noqa: BLE001 - as above
        raise ValueError(f"cannot load the causal LM in {path!r}: {_one_line(exc)}") from None
    return model.to(torch_device).eval()


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# files a transformers tokenizer is saved as: a folder with none of them holds no tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether the local folder ``path`` holds a saved tokenizer (one of :data:`TOKENIZER_FILES`)."""
    return any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def needs_tokenizer(data: str | os.PathLike) -> bool:
    """Whether the dataset at ``data`` holds text to tokenise (no ``input_ids``): a JSONL file (its first
    record decides) or a ``datasets`` save_to_disk folder / .parquet file (its columns decide)."""
    data = os.fspath(data)
    if os.path.isdir(data) or data.endswith(".parquet"):
        from ..datasets.samples import load_hf_dataset

        return "input_ids" not in load_hf_dataset(data).column_names
    with open(data, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    return "input_ids" not in json.loads(line)
                except ValueError:
                    return False  # the reader reports the bad line
    return False


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local folder (one-line ValueError if there is none).

    A folder whose ``tokenizer_config.json`` names a generic fast tokenizer (``TokenizersBackend`` /
    ``PreTrainedTokenizerFast``, e.g. :meth:`xtf_kernels.datasets.ArithmeticTokenizer.to_transformers` saved
    with ``save_pretrained``) is loaded as exactly that: transformers 5's ``AutoTokenizer`` would otherwise
    rebuild the tokenizer of the model type in ``config.json`` (Qwen2's BPE for a Qwen2 config) from the
    same ``tokenizer.json`` and encode different ids. Every other folder goes through ``AutoTokenizer``.
    """
    path = os.fspath(path)
    check_model_dir(path)
    transformers = _transformers()
    declared = None
    config_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as handle:
                declared = json.load(handle).get("tokenizer_class")
        except (ValueError, OSError, AttributeError):
            declared = None  # AutoTokenizer reports the problem below
    try:
        if declared in GENERIC_TOKENIZER_CLASSES:
            return transformers.PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - as above
        raise ValueError(f"cannot load a tokenizer from {path!r}: {_one_line(exc)}") from None
