import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import make_inputs
from xtf_kernels.bench.providers import materialised


def test_forward_only_gives_per_token_logprobs_with_zero_at_dropped_tokens():
    case = Case(tokens=23, hidden=8, vocab=57, dtype="float32", mode="fwd", keep=0.5, softcap=3.0)
    inputs = make_inputs(case, "cpu")
    out = materialised.PROVIDER.build(inputs, case)()
    logits = inputs.hidden.double() @ inputs.weight.double().t()
    logits = 3.0 * torch.tanh(logits / 3.0)
    expected = torch.log_softmax(logits, -1).gather(1, inputs.targets.unsqueeze(1)).squeeze(1)
    kept = inputs.token_weights > 0
    torch.testing.assert_close(out[kept].double(), expected[kept], rtol=1e-5, atol=1e-5)
    assert torch.all(out[~kept] == 0)
