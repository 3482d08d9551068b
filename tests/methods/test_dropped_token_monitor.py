"""The dropped-token monitor inside a real transformers Trainer: it measures at the right steps, its NLLs
equal a float64 full-logit recomputation on the trained model, it runs through the fused op, and it warns
when the dropped tokens drift."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.methods import tiny
from xtf_kernels.datasets import SFTCollator
from xtf_kernels.datasets import samples_to_records
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.methods import filter_samples
from xtf_kernels.methods import score_samples

transformers = pytest.importorskip("transformers")
DroppedTokenMonitor = pytest.importorskip("xtf_kernels.integrations.dropped_token_monitor").DroppedTokenMonitor


class XtfCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func.namespace == "xtf"
        return func(*args, **(kwargs or {}))


def full_logit_nll(model, samples, masks):
    total, count = 0.0, 0
    for sample, mask in zip(samples, masks):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=sample.input_ids[None]).logits[0].double(), -1)
        own = logp[:-1].gather(-1, sample.input_ids[1:, None]).squeeze(-1)
        total -= float(own[mask[1:]].sum())
        count += int(mask.sum())
    return total / count


def test_monitor_in_a_trainer(tmp_path):
    model = tiny.model("llama", num_layers=2, seed=1)
    samples = tiny.data(16).samples
    results = score_samples(XTFScorer(model, XTFConfig.paper(rules=("KN",), kn_pcp_max=0.014)), samples)
    monitor = DroppedTokenMonitor(samples[:6], results[:6], every_steps=2, warn_increase=None, batch_size=4)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                                          disable_tqdm=True, logging_steps=100)
    trainer = transformers.Trainer(model=model, args=args, data_collator=SFTCollator(pad_token_id=0),
                                   train_dataset=samples_to_records(filter_samples(samples, results)),
                                   callbacks=[monitor])
    trainer.train()
    assert [r["step"] for r in monitor.history] == [0, 2, 4, 5]
    dropped = [r.dropped & s.response_mask for r, s in zip(results[:6], samples[:6])]
    kept = [s.response_mask & ~d for s, d in zip(samples[:6], dropped)]
    last = monitor.history[-1]
    model.eval()
    assert last["dropped_nll"] == pytest.approx(full_logit_nll(model, samples[:6], dropped), rel=1e-5)
    assert last["kept_nll"] == pytest.approx(full_logit_nll(model, samples[:6], kept), rel=1e-5)
    assert last["dropped_tokens"] == sum(int(d.sum()) for d in dropped) > 0
    assert monitor.history[0]["dropped_nll"] != last["dropped_nll"]  # measured on the model as it trains
    logged = [e for e in trainer.state.log_history if "monitor/dropped_nll" in e]
    assert [e["step"] for e in logged] == [0, 2, 4, 5]
    with XtfCalls() as calls:
        monitor.measure(model, 99)
    assert calls.calls >= 2  # the NLL went through torch.ops.xtf (dropped and kept passes)


def test_monitor_warns_on_drift_and_checks_its_inputs():
    model = tiny.model("llama", num_layers=2, seed=1)
    samples = tiny.data(4).samples
    masks = [s.response_mask.clone() for s in samples]
    monitor = DroppedTokenMonitor(samples, masks, warn_increase=0.1)
    monitor.measure(model, 0)
    with torch.no_grad():
        model.lm_head.weight.mul_(-5.0)  # make the probe tokens much less likely
    with pytest.warns(UserWarning, match="forgetting"):
        monitor.measure(model, 1)
    with pytest.raises(ValueError, match="no dropped token"):
        DroppedTokenMonitor(samples, [torch.zeros_like(m) for m in masks])
    with pytest.raises(ValueError, match="2 dropped masks"):
        DroppedTokenMonitor(samples, masks[:2])
    with pytest.raises(ValueError, match="every_steps"):
        DroppedTokenMonitor(samples, masks, every_steps=0)
    with pytest.raises(ValueError, match="dropped\\[0\\]"):
        DroppedTokenMonitor(samples, [m.long() for m in masks])
