"""Short TRL runs (CPU, tiny random models, the arithmetic tokenizer, no downloads) shared by the TRL tests.

Every run records, besides TRL's own ``log_history``: the gradients of the first optimizer step, and the
``torch.ops.xtf.*`` calls of each step (an :class:`~tests.integrations.op_counter.XtfOpCounter` is active for the
whole run).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tests.integrations.op_counter import XtfOpCounter
from xtf_kernels.datasets.arithmetic import arithmetic_tokenizer

# Common TrainingArguments of every run: deterministic, quiet, nothing written but the output folder. TRL's configs
# default to bf16=True, which on the CPU means bf16 autocast: TRL's own kernel then rounds the logits to bf16 where
# xtf keeps them in fp32, so the runs are compared in fp32 (bf16=False), where both are exact to fp32 rounding.
COMMON_ARGS = dict(
    bf16=False,
    learning_rate=5e-3, lr_scheduler_type="constant", logging_steps=1, report_to="none", use_cpu=True,
    save_strategy="no", seed=0, data_seed=0, disable_tqdm=True, dataloader_num_workers=0,
)


def tokenizer():
    """The arithmetic tokenizer as a transformers tokenizer (72 tokens; pad 0, bos 1, eos 2)."""
    return arithmetic_tokenizer().to_transformers()


class Run(NamedTuple):
    trainer: object
    logs: list[dict]  # the per-step entries of log_history (those with a "loss")
    grads: dict[str, torch.Tensor]  # gradients just before the first optimizer step
    ops: XtfOpCounter
    params: dict[str, torch.Tensor]  # parameters after training


def _first_grads_callback(store: dict):
    from transformers import TrainerCallback

    class _FirstGrads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if not store:
                for name, p in model.named_parameters():
                    if p.grad is not None:
                        store[name] = p.grad.detach().clone()

    return _FirstGrads()


def train(trainer_factory) -> Run:
    """Build the trainer with ``trainer_factory(callbacks)`` and train it with the op counter active."""
    grads: dict[str, torch.Tensor] = {}
    ops = XtfOpCounter()
    trainer = trainer_factory([_first_grads_callback(grads), ops.callback()])
    with ops:
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    return Run(trainer, logs, grads, ops, params)


def assert_same_run(actual: Run, expected: Run, metrics: tuple[str, ...], *, atol: float = 1e-5) -> None:
    """Same logged loss and metrics at every step, same first-step gradients, same final parameters."""
    assert len(actual.logs) == len(expected.logs) > 0
    for step, (a, e) in enumerate(zip(actual.logs, expected.logs)):
        for key in ("loss", *metrics):
            assert key in e, f"TRL did not log {key!r}: {sorted(e)}"
            assert key in a, f"the patched run did not log {key!r}: {sorted(a)}"
            torch.testing.assert_close(float(a[key]), float(e[key]), atol=atol, rtol=1e-5,
                                       msg=lambda m, s=step, k=key: f"step {s}: {k}\n{m}")
    assert expected.grads and set(actual.grads) == set(expected.grads)
    for name, grad in expected.grads.items():
        scale = max(grad.abs().max().item(), 1e-6)
        torch.testing.assert_close(actual.grads[name], grad, atol=2e-5 * scale, rtol=2e-4,
                                   msg=lambda m, n=name: f"gradient {n}\n{m}")
    for name, value in expected.params.items():
        torch.testing.assert_close(actual.params[name], value, atol=2e-5, rtol=2e-4,
                                   msg=lambda m, n=name: f"parameter {n}\n{m}")
