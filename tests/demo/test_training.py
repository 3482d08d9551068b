"""Step-counted training: the sample plan, the held-out loss against an eager reference, the run record."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xtf_kernels.datasets import IGNORE_INDEX
from xtf_kernels.datasets import collate
from xtf_kernels.datasets import make_arithmetic_sft
from xtf_kernels.datasets import tiny_causal_lm
from xtf_kernels.demo.training import heldout_loss
from xtf_kernels.demo.training import step_plan
from xtf_kernels.demo.training import train_steps


def tiny_model(vocab_size: int, seed: int = 0):
    return tiny_causal_lm("llama", vocab_size=vocab_size, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                          seed=seed)


@pytest.fixture(scope="module")
def data():
    return make_arithmetic_sft(21, seed=3)


@pytest.mark.parametrize(("n", "steps", "batch"), [(10, 7, 3), (5, 1, 2), (13, 4, 13), (1, 3, 1)])
def test_plan_is_whole_shuffled_passes_cut_to_the_steps(n, steps, batch):
    plan = step_plan(n, steps, batch, seed=5)
    assert len(plan) == steps * batch
    for start in range(0, len(plan) - n + 1, n):
        assert sorted(plan[start : start + n]) == list(range(n))
    assert plan == step_plan(n, steps, batch, seed=5)


def test_plan_depends_on_the_seed():
    assert step_plan(50, 4, 10, seed=0) != step_plan(50, 4, 10, seed=1)


def test_heldout_loss_matches_eager_cross_entropy_of_the_logits(data):
    model = tiny_model(len(data.tokenizer))
    samples = data.samples[:9]
    batch = collate(samples, 0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    targets = batch.labels[:, 1:]
    total = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    expected = float(total) / int((targets != IGNORE_INDEX).sum())
    assert heldout_loss(model, samples, batch_size=4) == pytest.approx(expected, rel=1e-5)


def test_a_run_records_steps_evaluations_and_tokens(data):
    model = tiny_model(len(data.tokenizer))
    before = [p.detach().clone() for p in model.parameters()]
    run = train_steps(model, data.samples, steps=5, lr=1e-2, batch_size=4, seed=0, eval_samples=data.samples[:6],
                      eval_every=2)
    assert len(run.losses) == 5 and all(loss > 0 for loss in run.losses)
    assert run.eval_steps == [0, 2, 4, 5] and len(run.heldout_losses) == 4
    plan = step_plan(len(data.samples), 5, 4, seed=0)
    assert run.input_tokens == sum(len(data.samples[i]) for i in plan)
    assert run.loss_tokens == sum(int((data.samples[i].labels[1:] != IGNORE_INDEX).sum()) for i in plan)
    assert run.seconds > 0 and run.tokens_per_second == pytest.approx(run.input_tokens / run.seconds)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not model.training


def test_same_seed_same_losses_and_filtered_copies_see_the_same_samples(data):
    runs = [train_steps(tiny_model(len(data.tokenizer)), data.samples, steps=4, lr=1e-2, batch_size=4, seed=9)
            for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    masked = [s.with_labels(torch.where(torch.arange(len(s)) % 2 == 0, s.labels, IGNORE_INDEX)) for s in data.samples]
    filtered = train_steps(tiny_model(len(data.tokenizer)), masked, steps=4, lr=1e-2, batch_size=4, seed=9)
    assert filtered.input_tokens == runs[0].input_tokens and filtered.loss_tokens < runs[0].loss_tokens


def test_tokens_without_labels_leave_the_model_unchanged(data):
    # every label dropped: the fused loss is 0 with exactly zero gradient, so AdamW moves nothing
    model = tiny_model(len(data.tokenizer))
    before = [p.detach().clone() for p in model.parameters()]
    unlabelled = [s.with_labels(torch.full_like(s.labels, IGNORE_INDEX)) for s in data.samples]
    run = train_steps(model, unlabelled, steps=3, lr=1e-2, batch_size=4, seed=0)
    assert run.losses == [0.0, 0.0, 0.0] and run.loss_tokens == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_no_samples_is_an_error(data):
    with pytest.raises(ValueError, match="no samples"):
        train_steps(tiny_model(len(data.tokenizer)), [], steps=1, lr=1e-3, batch_size=2, seed=0)
