"""Argument checks shared by the public ops: every error names the argument and the shapes involved.

Only metadata is checked here (shapes, dtypes, devices, option values), so these checks cost no device
work; value checks (targets in range, weights >= 0) run inside the ops, see ops/compaction.py.
"""

from __future__ import annotations

import math

import torch

# float64 runs on the torch backend only (the others do not declare the "float64" feature, ops/registry.py).
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def check_tensor(name: str, x, *, dims: int | None = None, min_dims: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(x.shape)}")
    if min_dims is not None and x.dim() < min_dims:
        raise ValueError(f"{name} must have at least {min_dims} dimension(s), got shape {tuple(x.shape)}")


def check_float(name: str, x: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")


def check_head(hidden, weight, bias, *, prefix: str = "") -> None:
    """hidden (..., H), weight (V, H), bias (V,) | None; same float dtype and device."""
    h_name, w_name, b_name = f"{prefix}hidden", f"{prefix}weight", f"{prefix}bias"
    check_tensor(h_name, hidden, min_dims=1)
    check_tensor(w_name, weight, dims=2)
    check_float(h_name, hidden)
    check_float(w_name, weight)
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{h_name} has H={hidden.shape[-1]} (shape {tuple(hidden.shape)}) but {w_name} has "
            f"H={weight.shape[1]} (shape {tuple(weight.shape)}); {w_name} must be (V, H)"
        )
    if weight.shape[0] == 0:
        raise ValueError(f"{w_name} must have V >= 1 rows, got shape {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(
            f"{h_name} ({hidden.dtype}) and {w_name} ({weight.dtype}) must have the same dtype; cast one of them"
        )
    if hidden.device != weight.device:
        raise ValueError(f"{h_name} is on {hidden.device} but {w_name} is on {weight.device}")
    if bias is not None:
        check_tensor(b_name, bias, dims=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{b_name} must be (V,) = ({weight.shape[0]},), got shape {tuple(bias.shape)}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"{b_name} ({bias.dtype}) must have {w_name}'s dtype ({weight.dtype})")
        if bias.device != weight.device:
            raise ValueError(f"{b_name} is on {bias.device} but {w_name} is on {weight.device}")


def check_targets(targets, hidden, *, name: str = "targets") -> None:
    check_tensor(name, targets)
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {targets.dtype}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"{name} shape {tuple(targets.shape)} must equal hidden's leading shape {tuple(hidden.shape[:-1])} "
            f"(hidden is {tuple(hidden.shape)})"
        )
    if targets.device != hidden.device:
        raise ValueError(f"{name} is on {targets.device} but hidden is on {hidden.device}")


def check_token_weights(token_weights, targets) -> None:
    if token_weights is None:
        return
    check_tensor("token_weights", token_weights)
    if not (token_weights.is_floating_point() or token_weights.dtype == torch.bool):
        raise TypeError(f"token_weights must be a float or bool tensor, got {token_weights.dtype}")
    if tuple(token_weights.shape) != tuple(targets.shape):
        raise ValueError(
            f"token_weights shape {tuple(token_weights.shape)} must equal targets shape {tuple(targets.shape)}"
        )
    if token_weights.device != targets.device:
        raise ValueError(f"token_weights is on {token_weights.device} but targets is on {targets.device}")


def check_class_weights(class_weights, weight) -> None:
    """class_weights (V,) floating on weight's device, or None; values (finite, >= 0) are checked in the op."""
    if class_weights is None:
        return
    check_tensor("class_weights", class_weights)
    if not class_weights.is_floating_point():
        raise TypeError(f"class_weights must be a floating-point tensor, got {class_weights.dtype}")
    if tuple(class_weights.shape) != (weight.shape[0],):
        raise ValueError(
            f"class_weights must be (V,) = ({weight.shape[0]},) (one weight per vocabulary entry), got shape "
            f"{tuple(class_weights.shape)}"
        )
    if class_weights.device != weight.device:
        raise ValueError(f"class_weights is on {class_weights.device} but weight is on {weight.device}")


def check_shift(shift, targets: torch.Tensor | None = None) -> int:
    """The offset n of ``shift`` (True = 1, False = 0, or an int n >= 0, as Cut Cross-Entropy's): position i
    predicts ``targets[..., i + n]``, which needs a sequence dimension longer than n (targets (..., T))."""
    if not isinstance(shift, (bool, int)):
        raise TypeError(f"shift must be a bool or a non-negative int, got {shift!r}")
    offset = int(shift)
    if offset < 0:
        raise ValueError(f"shift must be a bool or a non-negative int, got {shift!r}")
    if offset and targets is not None and (targets.dim() == 0 or targets.shape[-1] <= offset):
        raise ValueError(
            f"shift={shift!r} needs targets (..., T) with a sequence length T >= {offset + 1} (position i predicts "
            f"i + {offset}), got targets of shape {tuple(targets.shape)}"
        )
    return offset


def check_logit_scale(logit_scale) -> float:
    """A finite number > 0."""
    return check_number("logit_scale", logit_scale, low=0.0, low_open=True)


def check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_softcap(softcap) -> float:
    """None -> 0.0 (off); otherwise a number > 0."""
    if softcap is None:
        return 0.0
    return check_number("softcap", softcap, low=0.0, low_open=True)


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_chunk_size(chunk_size) -> int:
    """None -> 0 (derive from the memory budget)."""
    if chunk_size is None:
        return 0
    check_int("chunk_size", chunk_size)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    return chunk_size


def check_max_kept_tokens(max_kept_tokens) -> int:
    """None -> 0 (the compacting mode, one host sync); else an int K >= 1 (the sync-free static mode)."""
    if max_kept_tokens is None:
        return 0
    check_int("max_kept_tokens", max_kept_tokens)
    if max_kept_tokens <= 0:
        raise ValueError(
            f"max_kept_tokens must be None (compact, one host sync) or a static bound >= 1 on the kept tokens, "
            f"got {max_kept_tokens}"
        )
    return max_kept_tokens


def num_items_tensor(num_items_in_batch, device: torch.device) -> torch.Tensor | None:
    """num_items_in_batch (int, float or a 0-d / 1-element tensor) as a 0-d fp32 tensor on ``device``."""
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                f"num_items_in_batch must hold one number, got shape {tuple(num_items_in_batch.shape)}"
            )
        return num_items_in_batch.detach().reshape(()).to(device=device, dtype=torch.float32, non_blocking=True)
    value = check_number("num_items_in_batch", num_items_in_batch, low=0.0)
    return torch.tensor(value, dtype=torch.float32, device=device)
