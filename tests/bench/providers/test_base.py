import sys

import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import make_inputs
from xtf_kernels.bench.providers.base import needs_cuda
from xtf_kernels.bench.providers.base import needs_module
from xtf_kernels.bench.providers.base import training_step


def test_training_step_clears_old_gradients_and_backpropagates():
    case = Case(tokens=5, hidden=3, vocab=7, dtype="float32")
    inputs = make_inputs(case, "cpu")
    step = training_step(inputs, case, lambda: (inputs.hidden @ inputs.weight.t()).sum())
    step()
    out = step()  # a second step must not add onto the first step's gradients
    assert not out.requires_grad
    torch.testing.assert_close(inputs.hidden.grad, inputs.weight.sum(0).expand(5, 3))
    torch.testing.assert_close(inputs.weight.grad, inputs.hidden.detach().sum(0).expand(7, 3))


def test_forward_only_step_runs_without_grad():
    case = Case(tokens=5, hidden=3, vocab=7, dtype="float32", mode="fwd")
    inputs = make_inputs(case, "cpu")
    seen = []
    training_step(inputs, case, lambda: seen.append(torch.is_grad_enabled()) or inputs.hidden.sum())()
    assert seen == [False]


def test_needs_cuda():
    assert needs_cuda(torch.device("cuda"), "x") is None
    missing = needs_cuda(torch.device("cpu"), "Liger's kernels")
    assert missing.status == "missing" and "CUDA" in missing.reason and "cpu" in missing.reason


def test_needs_module_tells_missing_from_broken(tmp_path, monkeypatch):
    assert needs_module("json", "stdlib") is None
    missing = needs_module("no_such_module_xyz", "pip install no-such")
    assert missing.status == "missing" and "pip install no-such" in missing.reason
    (tmp_path / "broken_peer_xyz.py").write_text("raise ImportError('needs a newer triton')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = needs_module("broken_peer_xyz", "pip install broken")
    assert broken.status == "missing" and "needs a newer triton" in broken.reason
    sys.modules.pop("broken_peer_xyz", None)
