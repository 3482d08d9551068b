"""A torch.compile'd chunk loop, the usual "compiled chunked CE" recipe (cf. torchtune's 8 output chunks).

The tokens are split into ``NUM_CHUNKS`` = 8 chunks. For each chunk one compiled function
(``torch.func.grad_and_value`` of the chunk's summed cross-entropy, so inductor fuses the softmax and
its gradient) returns the loss and the gradients; the loop accumulates d_weight in fp32 and writes
d_hidden, Liger-style, inside the forward, so only one chunk's logits live at a time. Compilation
(once per shape) happens during the warm-up steps and is not timed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..cases import Case
from ..inputs import IGNORE_INDEX
from ..inputs import BenchInputs
from .base import Provider
from .base import Step
from .base import Unavailable
from .base import training_step

NUM_CHUNKS = 8


def _chunk_loss(hidden, weight, targets, softcap: float | None):
    logits = (hidden @ weight.t()).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


@functools.cache
def _compiled(argnums: tuple[int, ...] | None):
    """Compiled (grads, loss) of one chunk for the given differentiable arguments (loss only for None)."""
    fn = _chunk_loss if argnums is None else torch.func.grad_and_value(_chunk_loss, argnums=argnums)
    return torch.compile(fn, dynamic=False)


class _CompiledChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap):
        need_weight = weight.requires_grad
        argnums = (0, 1) if need_weight else (0,)
        grad_fn = _compiled(argnums)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = hidden.new_zeros((), dtype=torch.float32)
        chunk = -(-hidden.shape[0] // NUM_CHUNKS)
        for start in range(0, hidden.shape[0], chunk):
            stop = start + chunk
            grads, loss = grad_fn(hidden[start:stop], weight, targets[start:stop], softcap)
            grad_hidden[start:stop] = grads[0]
            if need_weight:
                grad_weight += grads[1]
            total += loss
        count = (targets != IGNORE_INDEX).sum().clamp_min(1).to(torch.float32)
        ctx.save_for_backward(grad_hidden, grad_weight, count)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_loss / count
        d_hidden = (grad_hidden * scale).to(grad_hidden.dtype)
        d_weight = None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None


def compiled_chunked_loss(hidden, weight, targets, softcap: float | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (softcapped) over targets != IGNORE_INDEX."""
    if not (hidden.requires_grad and torch.is_grad_enabled()):
        loss_fn = _compiled(None)
        chunk = -(-hidden.shape[0] // NUM_CHUNKS)
        total = sum(
            loss_fn(hidden[s : s + chunk], weight, targets[s : s + chunk], softcap)
            for s in range(0, hidden.shape[0], chunk)
        )
        return total / (targets != IGNORE_INDEX).sum().clamp_min(1).to(torch.float32)
    return _CompiledChunkedCE.apply(hidden, weight, targets, softcap)


def _check(device: torch.device, case: Case) -> Unavailable | None:
    if not hasattr(torch, "compile"):
        return Unavailable("missing", f"torch {torch.__version__} has no torch.compile")
    return None


def _build(inputs: BenchInputs, case: Case) -> Step:
    return training_step(
        inputs, case, lambda: compiled_chunked_loss(inputs.hidden, inputs.weight, inputs.targets_ignored, case.softcap)
    )


PROVIDER = Provider("torch-compile", "peer", f"torch.compile chunk loop, {NUM_CHUNKS} chunks", "torch",
                    _check, _build)
