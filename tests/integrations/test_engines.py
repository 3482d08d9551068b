"""A patched transformers model under DDP, FSDP2 (fully_shard, lm_head sharded in its own unit or in the
root's) and DeepSpeed ZeRO-3 (CPU accelerator; skipped when deepspeed is not installed) on 2 gloo CPU
ranks: each rank trains on half of a batch with the global num_items_in_batch, and the loss and every
gradient (gathered from the shards) equal the single-process unpatched model's on the whole batch.
Includes a loss whose backward re-reads the head weight (per-token reduction), which needs FSDP2's
pre-backward re-gather of the resharded weight, and TRL's fused lm_head path (served by xtf) under FSDP2."""

from __future__ import annotations

import importlib.util

import pytest
import torch.distributed as dist

from tests.helpers import assert_close
from tests.integrations.distributed import run_ranks
from tests.integrations.op_counter import XtfOpCounter
from tests.integrations.tiny_models import VOCAB
from tests.integrations.tiny_models import batch
from tests.integrations.tiny_models import tiny_model
from xtf_kernels.functional import linear_cross_entropy
from xtf_kernels.integrations.trainer import count_label_tokens

pytest.importorskip("transformers")


def _per_token_mean(hidden, weight, targets):
    """A loss_fn whose backward recomputes from the saved weight (reduction "none")."""
    per_token = linear_cross_entropy(hidden, weight, targets, reduction="none")
    return per_token.sum() / (targets != -100).sum()


def _reference(arch: str, full: dict):
    model = tiny_model(arch)
    loss = model(**full).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def _check(model, loss, reference, world: int, label: str):
    expected_loss, expected_grads = reference
    total = loss.detach().clone()
    dist.all_reduce(total)
    assert_close(total, expected_loss, msg=f"{label}: loss")
    for name, p in model.named_parameters():
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        assert_close(grad, expected_grads[name.removeprefix("module.")], grad=True, msg=f"{label}: {name}")


def _run_ddp(rank, world, full, local, num_items, reference):
    from torch.nn.parallel import DistributedDataParallel

    from xtf_kernels.integrations.transformers import apply_xtf_kernels

    model = DistributedDataParallel(apply_xtf_kernels(tiny_model("llama")))
    out = model(**local, num_items_in_batch=num_items)
    assert out.logits is None
    (out.loss * world).backward()  # DDP averages gradients over ranks; the loss is already / global count
    _check(model, out.loss, reference, world, f"ddp rank {rank}")


def _run_fsdp2(rank, world, full, local, num_items, reference, *, arch, head_unit, loss_fn):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from xtf_kernels.integrations.transformers import apply_xtf_kernels

    model = apply_xtf_kernels(tiny_model(arch), loss_fn=loss_fn)
    for layer in model.model.layers:
        fully_shard(layer)
    if head_unit:
        fully_shard(model.lm_head)
    fully_shard(model)
    # Outside a forward the head weight is this rank's shard: the loss must run inside the head's forward.
    assert isinstance(model.lm_head.weight, DTensor) and model.lm_head.weight.to_local().shape[0] < VOCAB
    for step in range(2):  # the second step runs without the first call's logits check
        model.zero_grad(set_to_none=True)
        out = model(**local, num_items_in_batch=num_items)
        (out.loss * world).backward()
        label = f"fsdp2 {arch} head_unit={head_unit} loss_fn={loss_fn is not None} rank {rank} step {step}"
        _check(model, out.loss, reference, world, label)


def _trl_reference(full: dict, num_items):
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_model("llama")
    add_fused_lm_head(model, temperature=0.8, outputs=("log_probs", "entropy"))
    loss = model(**full, fused_lm_head=True, num_items_in_batch=num_items).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def _run_fsdp2_trl(rank, world, local, num_items, reference):
    """TRL's fused lm_head path on a patched model under FSDP2, the head in its own unit: xtf computes the
    log-probs inside the head's forward on the gathered weight."""
    from torch.distributed.fsdp import fully_shard
    from trl.trainer.utils import add_fused_lm_head

    from xtf_kernels.integrations.transformers import apply_xtf_kernels

    model = apply_xtf_kernels(tiny_model("llama"))
    add_fused_lm_head(model, temperature=0.8, outputs=("log_probs", "entropy"))
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model.lm_head)
    fully_shard(model)
    with XtfOpCounter() as ops:
        out = model(**local, fused_lm_head=True, num_items_in_batch=num_items)
        (out.loss * world).backward()
    assert ops.calls["token_logprobs"] == 1 and ops.calls["head_backward"] == 1, ops.calls
    _check(model, out.loss, reference, world, f"fsdp2 trl fused head rank {rank}")


def _worker(rank: int, world: int) -> None:
    full = batch(4, 9, seed=7)
    half = full["input_ids"].shape[0] // world
    local = {k: v[rank * half : (rank + 1) * half] for k, v in full.items()}
    num_items = count_label_tokens(full)
    llama, qwen2 = _reference("llama", full), _reference("qwen2", full)
    _run_ddp(rank, world, full, local, num_items, llama)
    _run_fsdp2(rank, world, full, local, num_items, llama, arch="llama", head_unit=True, loss_fn=None)
    _run_fsdp2(rank, world, full, local, num_items, llama, arch="llama", head_unit=True, loss_fn=_per_token_mean)
    # Tied embeddings (Qwen2): the head weight is the input embedding, so both stay in the root's unit.
    _run_fsdp2(rank, world, full, local, num_items, qwen2, arch="qwen2", head_unit=False, loss_fn=None)
    if importlib.util.find_spec("trl") is not None:
        _run_fsdp2_trl(rank, world, local, num_items, _trl_reference(full, num_items))


def test_ddp_and_fsdp2_match_the_single_process_model():
    run_ranks(_worker, 2)


def _deepspeed_worker(rank: int, world: int) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    import sys

    import deepspeed
    import deepspeed.comm.torch
    from deepspeed.utils import safe_get_full_grad

    from xtf_kernels.integrations.transformers import apply_xtf_kernels

    # The shared-memory all-reduce is a C++ op DeepSpeed compiles on first use (16 minutes on the loaded 2-core
    # machine); gloo suffices. Patched through sys.modules: the attribute deepspeed.comm.torch is the torch package
    # itself (deepspeed.comm re-exports it), not this submodule.
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    full = batch(4, 9, seed=7)
    half = full["input_ids"].shape[0] // world
    local = {k: v[rank * half : (rank + 1) * half] for k, v in full.items()}
    expected_loss, expected_grads = _reference("llama", full)
    config = {
        "train_micro_batch_size_per_gpu": half, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3}, "optimizer": {"type": "SGD", "params": {"lr": 0.0}},
        "zero_allow_untested_optimizer": True,
    }
    model = apply_xtf_kernels(tiny_model("llama"))
    engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
    assert model.lm_head.weight.numel() == 0  # partitioned: only the head's own forward gathers it
    out = engine(**local, num_items_in_batch=count_label_tokens(full))
    assert out.logits is None
    engine.backward(out.loss * world)  # ZeRO averages gradients over ranks
    total = out.loss.detach().clone()
    dist.all_reduce(total)
    assert_close(total, expected_loss, msg=f"zero3 rank {rank}: loss")
    for name, p in model.named_parameters():
        assert_close(safe_get_full_grad(p), expected_grads[name], grad=True, msg=f"zero3 rank {rank}: {name}")


def test_deepspeed_zero3_matches_the_single_process_model():
    pytest.importorskip("deepspeed")
    run_ranks(_deepspeed_worker, 2)
