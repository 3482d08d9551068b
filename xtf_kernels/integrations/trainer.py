"""Training-loop helpers for a model patched by :func:`~xtf_kernels.integrations.transformers.apply_xtf_kernels`.

transformers.Trainer: nothing beyond the patch is needed. The patched model sets ``accepts_loss_kwargs``,
so Trainer passes ``num_items_in_batch`` (its count of ``labels[..., 1:] != -100`` over the accumulated
micro-batches, and across devices with ``average_tokens_across_devices``) and does not divide the loss by
the accumulation steps again; the forward's signature names ``token_weights`` and the ``loss_columns``, so
``remove_unused_columns`` keeps those dataset columns. Per-token columns need padding like the labels:
wrap the collator in :class:`TokenColumnsCollator`::

    model = apply_xtf_kernels(AutoModelForCausalLM.from_pretrained(name))
    collator = TokenColumnsCollator(DataCollatorForSeq2Seq(tokenizer), {"token_weights": 0.0})
    Trainer(model=model, args=TrainingArguments(...), train_dataset=ds, data_collator=collator).train()

Leave ``TrainingArguments.label_smoothing_factor`` at 0 and ``compute_loss_func`` unset: with either, Trainer
takes the labels out of the batch and computes the loss from logits, so the fused path never runs (an
:class:`~xtf_kernels.integrations.bypass.XtfBypassWarning` says so once; a ``token_weights`` column then arrives
without labels, a ValueError). Use ``apply_xtf_kernels(model,
label_smoothing=...)`` or its ``loss_fn`` instead.

Masks from the XTF / Token Cleaning pipeline: data whose labels already hold -100 on dropped tokens needs
nothing at all (preferred: Trainer's ``num_items_in_batch`` then counts kept tokens only); 0/1 or soft
masks go in a ``token_weights`` column. RHO-1 (selective loss on the excess over a reference model's
per-token loss, ``ref_losses`` column per label position)::

    model = apply_xtf_kernels(model, loss_fn=partial(rho1_loss, keep_ratio=0.6), loss_columns=("ref_losses",))
    collator = TokenColumnsCollator(base_collator, {"ref_losses": 0.0})

An SFT loop of one's own (what TRL's SFTTrainer does around the model, minus its metrics) is
:func:`accumulate_gradients` per optimizer step::

    for step_batches in chunks_of(loader, accumulation_steps):
        loss = accumulate_gradients(model, step_batches)      # backward done, transformers' GA convention
        optimizer.step(); optimizer.zero_grad()

TRL (SFTTrainer, GRPOTrainer, DPOTrainer, RLOO, KTO): nothing beyond the patch either. TRL computes its loss and
its ``entropy`` / ``mean_token_accuracy`` metrics from per-token outputs of its fused lm_head
(``model(..., fused_lm_head=True)``), never from ``outputs.logits``; on a patched model that call is served by
xtf's ``token_logprobs`` (see :mod:`.trl`). Masks from the pipeline go in the labels (-100), which TRL's packing
keeps; a ``token_weights`` column needs ``remove_unused_columns=False`` (SFTTrainer keeps only input_ids, labels
and seq_lengths otherwise) and TRL's collator wrapped in :class:`TokenColumnsCollator`, without packing (TRL's
packing keeps input_ids and labels only)::

    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    apply_xtf_kernels(model)
    collator = TokenColumnsCollator(DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id),
                                    {"token_weights": 0.0})
    SFTTrainer(model=model, args=SFTConfig(..., remove_unused_columns=False), train_dataset=ds,
               processing_class=tok, data_collator=collator).train()

Leave SFTTrainer's ``compute_loss_func`` unset (it computes the loss from full logits; xtf then warns once).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import torch
from torch import nn

_PADDING_SIDES = ("right", "left")


class TokenColumnsCollator:
    """Pads per-token columns of variable-length features to the collated batch's length.

    Args:
        collator: the collator that pads ``input_ids`` / ``labels`` (e.g. ``DataCollatorForSeq2Seq``).
        columns: column name -> padding value, e.g. ``{"token_weights": 0.0, "ref_losses": 0.0}``.
        padding_side: "right" or "left"; None takes ``collator.tokenizer.padding_side`` (else "right").
        length_key: the batch key whose last dimension is the padded length.

    Each feature holds a list or 1-D tensor per column, one value per token of its ``input_ids``; the
    batch gets a (B, T) float32 tensor per column.
    """

    def __init__(
        self,
        collator: Callable,
        columns: Mapping[str, float],
        *,
        padding_side: str | None = None,
        length_key: str = "labels",
    ):
        if not callable(collator):
            raise TypeError(f"collator must be callable, got {type(collator).__name__}")
        if not isinstance(columns, Mapping) or not columns:
            raise TypeError(f"columns must be a non-empty mapping of column name -> padding value, got {columns!r}")
        if padding_side is None:
            tokenizer = getattr(collator, "tokenizer", None) or getattr(collator, "processing_class", None)
            padding_side = getattr(tokenizer, "padding_side", "right")
        if padding_side not in _PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {_PADDING_SIDES}, got {padding_side!r}")
        self.collator = collator
        self.columns = {str(name): float(fill) for name, fill in columns.items()}
        self.padding_side = padding_side
        self.length_key = length_key

    def __call__(self, features: Sequence[Mapping]) -> dict:
        features = [dict(f) for f in features]
        taken = {}
        for name in self.columns:
            present = [name in f for f in features]
            if any(present) and not all(present):
                raise ValueError(f"column {name!r} is present in some features of the batch but not in others")
            if all(present):
                taken[name] = [torch.as_tensor(f.pop(name), dtype=torch.float32) for f in features]
        batch = self.collator(features)
        if not taken:
            return batch
        if self.length_key not in batch:
            raise KeyError(f"the collated batch has no {self.length_key!r} to take the padded length from")
        rows, length = len(features), batch[self.length_key].shape[-1]
        for name, values in taken.items():
            out = torch.full((rows, length), self.columns[name], dtype=torch.float32)
            for row, value in enumerate(values):
                if value.dim() != 1 or value.shape[0] > length:
                    raise ValueError(
                        f"column {name!r} of feature {row} has shape {tuple(value.shape)}; expected a 1-D sequence "
                        f"of at most the padded length {length}"
                    )
                if self.padding_side == "right":
                    out[row, : value.shape[0]] = value
                else:
                    out[row, length - value.shape[0] :] = value
            batch[name] = out
        return batch


def count_label_tokens(batch: Mapping, *, ignore_index: int = -100) -> torch.Tensor:
    """Tokens that carry a loss in a causal-LM batch: ``shift_labels != ignore_index`` if the batch has
    them, else ``labels[..., 1:] != ignore_index`` (the count transformers' Trainer uses). () int64."""
    if batch.get("shift_labels") is not None:
        return (batch["shift_labels"] != ignore_index).sum()
    if batch.get("labels") is None:
        raise KeyError("the batch has neither labels nor shift_labels")
    return (batch["labels"][..., 1:] != ignore_index).sum()


def accumulate_gradients(
    model: nn.Module,
    micro_batches: Sequence[Mapping],
    *,
    group=None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Forward and backward over the micro-batches of one optimizer step, normalised as transformers does.

    Each micro-batch's loss is ``sum / num_items_in_batch`` with the token count taken over all of them
    (and, with ``group``, all-reduced over that ``torch.distributed`` group, the loss then multiplied by
    the group size so that the gradient averaging of DDP / FSDP yields the global token mean). The
    accumulated gradient equals that of one batch holding every micro-batch.

    Returns:
        () fp32 detached: the step's token-mean loss; with ``group``, this rank's share of it (the shares
        sum to the global token mean over the group).
    """
    if not micro_batches:
        raise ValueError("micro_batches must hold at least one batch")
    num_items = sum(count_label_tokens(b, ignore_index=ignore_index) for b in micro_batches)
    scale = 1
    if group is not None:
        import torch.distributed as dist

        dist.all_reduce(num_items, group=group)
        scale = dist.get_world_size(group)
    total = torch.zeros((), dtype=torch.float32)
    for micro_batch in micro_batches:
        loss = model(**micro_batch, num_items_in_batch=num_items).loss * scale
        loss.backward()
        total = total + loss.detach().float().cpu() / scale
    return total
