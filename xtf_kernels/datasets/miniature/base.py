"""The miniature's pretrained base: tokenizer + ~1M-parameter Llama-config model, built once and cached on disk.

:func:`load_base` returns the cached base of a :class:`BaseConfig` or builds it: generate pretraining
documents (:func:`~.text.pretraining_document`), train the BPE tokenizer on them, build the model from a
transformers ``LlamaConfig`` (nothing downloaded), and pretrain it on every token of the documents with the
fused loss (AdamW, linear warm-up then cosine decay). The cache folder is named by a hash of the config, so
a changed knob builds a new base; its files are written to a temporary folder that is renamed into place
(a reader never sees a half-written base; two builders race harmlessly, the first rename wins), and every
file is checked against the SHA-256 recorded in its manifest on read.

Default location: ``$XDG_CACHE_HOME/xtf_kernels`` or ``~/.cache/xtf_kernels`` (``cache_dir=`` overrides).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..._atomic import atomic_write_bytes
from ..._atomic import atomic_write_text
from ...errors import CorruptFileError
from ..samples import collate
from .encoding import encode_document
from .text import pretraining_document
from .tokenizer import MiniatureTokenizer

FORMAT = "xtf-miniature-base"
VERSION = 1
SOURCES = ("world.py", "text.py", "encoding.py", "tokenizer.py", "base.py")


@dataclass(frozen=True)
class BaseConfig:
    """Every knob of the base; the cache key is a hash of all of them.

    Model: a Llama config (RMSNorm, RoPE, SwiGLU, grouped-query attention) of ``hidden_size`` x
    ``num_layers`` with an untied lm_head; at the defaults 1.04M parameters (2,000 x 128 embedding and head,
    three 0.17M-parameter blocks). Pretraining: ``documents`` generated documents (about 40 tokens each),
    ``epochs`` passes in batches of ``batch_size``, peak rate ``lr``; ``two_step_share`` of the documents are
    problems in the SFT format.

    Why these defaults (measured, seed 0-2, 15% noise, 1,200-problem SFT pool, one epoch at 3e-4): with 16,000
    documents (0.84M tokens) the base knew too little arithmetic for the SFT to teach the two-step task (held-out
    exact match 5% before and 9-14% after fine-tuning, with or without the noise: no filter could show a
    difference); with 48,000 documents (2.5M tokens, 4 minutes on one idle core) it solves every one-step sum
    and fact, and ``two_step_share`` decides how much of the SFT task it already knows: 5% of two-step problems
    gave a base that already solved 100% of them, 1% one that solves 11-14%, rising to 98-99% after one epoch
    of clean SFT and to 57-64% when 15% of the response tokens are noise (78-84% with the noise tokens dropped).
    Those figures are base seed 0's (the SFT seeds were 0-2): bases pretrained from seeds 1-3 also solve every
    one-step sum and fact, but one epoch of clean SFT takes seeds 1 and 2 only to 15% and 31% on the two-step
    task and seed 3 to about 50% or 88-99% by SFT seed (benchmarks/methods/results/replication*); the epoch at
    which the fine-tuning learns the task differs by base (results/sft_epochs: 1 for seed 0, 2-3 for seed 2,
    more than 4 for seed 1), so the benchmark's exact-match sensitivity rests on this base draw.
    """

    seed: int = 0
    vocab_size: int = 2000
    tokenizer_documents: int = 6000
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 320
    documents: int = 48000
    epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    two_step_share: float = 0.01

    def __post_init__(self):
        for name in ("vocab_size", "tokenizer_documents", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "intermediate_size", "documents", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, high in (("lr", 1.0), ("warmup_fraction", 1.0), ("two_step_share", 0.45)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= high:
                raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}) and be a "
                             f"multiple of num_kv_heads ({self.num_kv_heads})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """Hash of the knobs and of the code of every module that decides the base's bytes (text grammar,
        word lists, encoding, tokenizer, pretraining): changing the generator builds a new base; editing a
        comment or a docstring does not (the code is hashed as its syntax tree without docstrings)."""
        text = json.dumps({"format": FORMAT, "version": VERSION, **self.to_dict()}, sort_keys=True)
        digest = hashlib.sha256(text.encode())
        for name in SOURCES:
            digest.update(_code_fingerprint(name).encode())
        return digest.hexdigest()[:16]


def _code_fingerprint(name: str) -> str:
    """The syntax tree of module ``name`` of this package, docstrings removed, as text."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@dataclass
class Base:
    """model: the pretrained ``LlamaForCausalLM`` (fp32, eval mode); tokenizer: its
    :class:`MiniatureTokenizer`; info: what pretraining did (tokens, steps, final loss, seconds, path)."""

    model: torch.nn.Module
    tokenizer: MiniatureTokenizer
    config: BaseConfig
    info: dict


def default_cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "xtf_kernels")


def build_model(config: BaseConfig, vocab_size: int):
    """The randomly initialised Llama-config model of ``config`` (seeded; the global RNG is left alone)."""
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM

    llama = LlamaConfig(vocab_size=vocab_size, hidden_size=config.hidden_size,
                        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                        num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                        max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(llama)
    return model.eval()


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine to 10% of the peak


def pretrain(model, samples, config: BaseConfig, *, log: Callable[[str], None] | None = None) -> dict:
    """Train ``model`` in place on every token of ``samples`` (fused loss); returns tokens, steps, final loss."""
    from ...functional import linear_cross_entropy

    generator = torch.Generator().manual_seed(config.seed)
    order = torch.cat([torch.randperm(len(samples), generator=generator) for _ in range(config.epochs)]).tolist()
    steps = -(-len(order) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, int(config.warmup_fraction * steps))
    losses, tokens = [], 0
    model.train()
    try:
        for step in range(steps):
            batch = collate([samples[i] for i in order[step * config.batch_size:(step + 1) * config.batch_size]], 0)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, steps, config.lr, warmup)
            hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            loss = linear_cross_entropy(hidden[:, :-1], model.lm_head.weight, batch.labels[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            tokens += int(batch.attention_mask.sum())
            if log is not None and (step + 1) % max(1, steps // 10) == 0:
                log(f"pretraining step {step + 1}/{steps}, loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    finally:
        model.eval()
    tail = losses[-20:]
    return {"tokens": tokens, "steps": steps, "final_loss": sum(tail) / len(tail)}


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _read(folder: str, config: BaseConfig) -> Base:
    from safetensors.torch import load_file

    manifest_path = os.path.join(folder, "manifest.json")
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{manifest_path}: unreadable ({exc}); delete {folder} to rebuild the base") from None
    expected = (FORMAT, VERSION, config.to_dict(), config.key)
    if (manifest.get("format"), manifest.get("version"), manifest.get("config"), manifest.get("key")) != expected:
        raise CorruptFileError(f"{manifest_path}: not the manifest of this base config; delete {folder} to rebuild")
    for name, digest in manifest["files"].items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or _sha256(path) != digest:
            raise CorruptFileError(f"{path}: missing or its SHA-256 does not match the manifest; delete {folder} "
                                   "to rebuild the base")
    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as handle:
        tokenizer = MiniatureTokenizer.from_json(handle.read())
    model = build_model(config, len(tokenizer))
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    return Base(model.eval(), tokenizer, config, {**manifest["pretrain"], "path": folder, "cached": True})


def build_base(config: BaseConfig, *, log: Callable[[str], None] | None = None) -> Base:
    """Generate, train the tokenizer, pretrain; nothing is read from or written to disk."""
    start = time.perf_counter()
    rng = random.Random(config.seed)
    documents = [pretraining_document(rng, config.two_step_share) for _ in range(config.documents)]
    tokenizer_texts = [d.prompt_text + d.response_text for d in documents[: config.tokenizer_documents]]
    tokenizer = MiniatureTokenizer.train(tokenizer_texts, config.vocab_size)
    samples = [encode_document(d, tokenizer, label_prompt=True).sample for d in documents]
    model = build_model(config, len(tokenizer))
    info = pretrain(model, samples, config, log=log)
    info.update(documents=len(documents), parameters=sum(p.numel() for p in model.parameters()),
                seconds=time.perf_counter() - start)
    return Base(model, tokenizer, config, info)


def load_base(config: BaseConfig | None = None, *, cache_dir: str | os.PathLike | None = None,
              log: Callable[[str], None] | None = None) -> Base:
    """The cached base of ``config`` (default :class:`BaseConfig`), built and cached on first use."""
    from safetensors.torch import save

    config = config or BaseConfig()
    root = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = os.path.join(root, f"miniature-base-{config.key}")
    if os.path.isdir(folder):
        return _read(folder, config)
    if log is not None:
        log(f"building the miniature base (once; cached in {folder})")
    base = build_base(config, log=log)
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".miniature-base-", dir=root)
    try:
        state = {name: tensor.contiguous() for name, tensor in base.model.state_dict().items()}
        atomic_write_bytes(os.path.join(staging, "model.safetensors"), save(state))
        atomic_write_text(os.path.join(staging, "tokenizer.json"), base.tokenizer.to_json())
        files = {name: _sha256(os.path.join(staging, name)) for name in ("model.safetensors", "tokenizer.json")}
        manifest = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "key": config.key, "files": files,
                    "pretrain": base.info}
        atomic_write_text(os.path.join(staging, "manifest.json"), json.dumps(manifest, indent=1, sort_keys=True))
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, folder)
        except OSError:  # another process renamed its copy into place first: use that one
            shutil.rmtree(staging, ignore_errors=True)
            return _read(folder, config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    base.info.update(path=folder, cached=False)
    return base
