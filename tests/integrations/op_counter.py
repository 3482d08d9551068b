"""Proof that xtf_kernels ran: count ``torch.ops.xtf.*`` calls, in total and per training step."""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode


class XtfOpCounter(TorchDispatchMode):
    """Counts every dispatched ``torch.ops.xtf.*`` overload (forward and backward ops alike) while active.

    ``steps`` holds one Counter per training step when :meth:`callback` is given to a transformers Trainer.
    """

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.steps: list[Counter[str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "xtf":
            self.calls[func._opname] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def callback(self):
        """A TrainerCallback recording the op counts of each optimizer step into ``steps``."""
        from transformers import TrainerCallback

        counter = self

        class _PerStep(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                counter._start = Counter(counter.calls)

            def on_step_end(self, args, state, control, **kwargs):
                counter.steps.append(counter.calls - counter._start)

        return _PerStep()
