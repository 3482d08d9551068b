import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import make_inputs
from xtf_kernels.bench.providers import PROVIDERS


def test_keep_fraction_goes_through_token_weights():
    """xtf drops tokens through token_weights (the loss is the mean over kept tokens only)."""
    case = Case(tokens=31, hidden=8, vocab=41, dtype="float32", keep=0.4)
    inputs = make_inputs(case, "cpu")
    loss = PROVIDERS["xtf-torch"].build(inputs, case)()
    logits = inputs.hidden.detach().double() @ inputs.weight.detach().double().t()
    per_token = torch.nn.functional.cross_entropy(logits, inputs.targets, reduction="none")
    kept = inputs.token_weights > 0
    torch.testing.assert_close(loss.double(), per_token[kept].mean(), rtol=1e-5, atol=1e-6)
    assert torch.all(inputs.hidden.grad[~kept] == 0)


def test_missing_backend_module_is_reported(monkeypatch):
    from xtf_kernels.bench.providers import xtf

    monkeypatch.setitem(xtf._BACKEND_MODULES, "torch", "xtf_kernels.ops._nowhere.backend")
    unavailable = xtf._checker("torch")(torch.device("cpu"), Case(tokens=4, hidden=2, vocab=3))
    assert unavailable.status == "missing" and "_nowhere" in unavailable.reason
