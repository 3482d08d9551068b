"""Short transformers.Trainer runs (CPU, tiny model, no downloads) with and without the fused loss, the
per-token column collator, and the gradient-accumulation helper of custom loops."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.integrations.tiny_models import VOCAB
from tests.integrations.tiny_models import batch
from tests.integrations.tiny_models import tiny_model
from tests.integrations.tiny_models import twin
from xtf_kernels.functional import linear_cross_entropy
from xtf_kernels.integrations.trainer import TokenColumnsCollator
from xtf_kernels.integrations.trainer import accumulate_gradients
from xtf_kernels.integrations.trainer import count_label_tokens

transformers = pytest.importorskip("transformers")

from xtf_kernels.integrations.transformers import apply_xtf_kernels  # noqa: E402


def _dataset(size: int = 8, seed: int = 0, columns: tuple[str, ...] = ()):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(size):
        length = 5 + (i * 3) % 8
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        prompt = 1 + i % 3
        row = dict(input_ids=ids, labels=[-100] * prompt + ids[prompt:])
        for name in columns:
            row[name] = torch.rand(length, generator=generator).tolist()
        rows.append(row)
    return rows


def _pad(features):
    """input_ids padded with 0, attention_mask, labels padded with -100 (right padding)."""
    length = max(len(f["input_ids"]) for f in features)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        pad = length - len(f["input_ids"])
        out["input_ids"].append(f["input_ids"] + [0] * pad)
        out["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        out["labels"].append(f["labels"] + [-100] * pad)
    return {k: torch.tensor(v) for k, v in out.items()}


def _train(model, dataset, collator, tmp_path, steps: int = 4):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=5e-3, lr_scheduler_type="constant", logging_steps=1, report_to="none", use_cpu=True,
        save_strategy="no", seed=0, data_seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    return torch.tensor([h["loss"] for h in trainer.state.log_history if "loss" in h], dtype=torch.float64)


def test_trainer_loss_curve_and_final_weights_match_the_unpatched_run(tmp_path):
    reference = tiny_model("llama")
    patched = apply_xtf_kernels(twin(reference))
    dataset = _dataset()
    expected = _train(reference, dataset, _pad, tmp_path / "reference")
    actual = _train(patched, dataset, _pad, tmp_path / "patched")
    assert len(actual) == 4
    # Trainer logs losses rounded to 4 decimals.
    torch.testing.assert_close(actual, expected, atol=2e-4, rtol=0)
    for (name, p), q in zip(reference.named_parameters(), patched.parameters()):
        assert_close(q, p, msg=name)


def test_trainer_keeps_the_token_weights_column_and_applies_it(tmp_path):
    """Weights of 2 everywhere double every loss; Adam is scale invariant, so the whole curve doubles."""
    reference = tiny_model("llama")
    patched = apply_xtf_kernels(twin(reference))
    dataset = _dataset()
    weighted = [dict(row, token_weights=[2.0] * len(row["input_ids"])) for row in dataset]
    expected = _train(reference, dataset, _pad, tmp_path / "reference")
    actual = _train(patched, weighted, TokenColumnsCollator(_pad, {"token_weights": 0.0}), tmp_path / "patched")
    torch.testing.assert_close(actual, 2 * expected, atol=5e-4, rtol=0)


def test_trainer_passes_loss_columns_to_loss_fn_with_the_accumulation_rescale(tmp_path):
    """A loss_fn returning the plain micro-batch mean, rescaled by labelled / num_items, gives the reference curve;
    it also checks that its ref_losses column arrives shifted like the labels."""
    seen = []

    def mean_loss(hidden, weight, targets, *, ref_losses):
        assert ref_losses.shape == targets.shape
        assert torch.all(ref_losses[..., -1] == 0)  # the shift pads the last position
        seen.append(ref_losses)
        return linear_cross_entropy(hidden, weight, targets)

    reference = tiny_model("llama")
    patched = apply_xtf_kernels(twin(reference), loss_fn=mean_loss, loss_columns=("ref_losses",))
    dataset = _dataset(columns=("ref_losses",))
    expected = _train(reference, dataset, _pad, tmp_path / "reference")
    actual = _train(patched, dataset, TokenColumnsCollator(_pad, {"ref_losses": 0.0}), tmp_path / "patched")
    assert len(seen) == 8  # 4 steps x 2 micro-batches
    torch.testing.assert_close(actual, expected, atol=2e-4, rtol=0)


def test_accumulate_gradients_equals_one_batch_holding_every_micro_batch():
    reference = tiny_model("qwen2")
    patched = apply_xtf_kernels(twin(reference))
    full = batch(4, 9)
    halves = [{k: v[:2] for k, v in full.items()}, {k: v[2:] for k, v in full.items()}]
    step_loss = accumulate_gradients(patched, halves)
    expected = reference(**full).loss
    expected.backward()
    assert_close(step_loss, expected)
    for (name, p), q in zip(reference.named_parameters(), patched.parameters()):
        assert_close(q.grad, p.grad, grad=True, msg=name)
    with pytest.raises(ValueError, match="at least one"):
        accumulate_gradients(patched, [])


def test_count_label_tokens_follows_the_shift():
    labels = torch.tensor([[5, -100, 7, 8], [-100, 1, 2, -100]])
    assert int(count_label_tokens({"labels": labels})) == 4  # position 0 is never a target
    assert int(count_label_tokens({"labels": labels, "shift_labels": labels})) == 5
    with pytest.raises(KeyError):
        count_label_tokens({"input_ids": labels})


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_columns_collator_pads_each_column_on_the_tokens_side(side):
    def base(features):
        length = max(len(f["input_ids"]) for f in features)
        rows = [([0] * (length - len(f["input_ids"])), f["input_ids"]) for f in features]
        padded = [pad + ids if side == "left" else ids + pad for pad, ids in rows]
        return {"input_ids": torch.tensor(padded), "labels": torch.tensor(padded)}

    features = [dict(input_ids=[4, 5, 6], token_weights=[0.5, 1.0, 0.0]), dict(input_ids=[7], token_weights=[2.0])]
    out = TokenColumnsCollator(base, {"token_weights": -1.0}, padding_side=side)(features)
    expected = [[0.5, 1.0, 0.0], [2.0, -1.0, -1.0]] if side == "right" else [[0.5, 1.0, 0.0], [-1.0, -1.0, 2.0]]
    assert torch.equal(out["token_weights"], torch.tensor(expected))
    assert "token_weights" in features[0]  # the caller's features are not modified


def test_token_columns_collator_rejects_ragged_or_partial_columns():
    collator = TokenColumnsCollator(lambda f: {"labels": torch.zeros(len(f), 2)}, {"token_weights": 0.0})
    with pytest.raises(ValueError, match="some features"):
        collator([{"token_weights": [1.0]}, {}])
    with pytest.raises(ValueError, match="at most the padded length"):
        collator([{"token_weights": [1.0, 1.0, 1.0]}])
    with pytest.raises(ValueError, match="padding_side"):
        TokenColumnsCollator(_pad, {"w": 0.0}, padding_side="middle")
    with pytest.raises(TypeError, match="columns"):
        TokenColumnsCollator(_pad, ["w"])


def test_trainer_label_smoothing_factor_bypasses_the_fused_loss_and_says_so(tmp_path):
    """Trainer's label smoother takes the labels out of the batch and smooths full logits: one warning, by name."""
    from xtf_kernels.integrations import bypass

    bypass.reset_warnings()
    model = apply_xtf_kernels(tiny_model("llama"))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, label_smoothing_factor=0.1,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_dataset(), data_collator=_pad)
    with pytest.warns(bypass.XtfBypassWarning, match=r"called from trainer\.py:\d+ in compute_loss"):
        trainer.train()
