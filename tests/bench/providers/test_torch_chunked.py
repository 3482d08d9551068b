import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.providers import torch_chunked


def test_softcap_is_unsupported_and_says_so():
    case = Case(tokens=8, hidden=4, vocab=16, dtype="float32", softcap=30.0)
    unavailable = torch_chunked.PROVIDER.check(torch.device("cpu"), case)
    assert unavailable.status == "unsupported" and "softcap" in unavailable.reason


def test_a_torch_without_the_op_is_missing(monkeypatch):
    monkeypatch.delattr(torch.nn.functional, "linear_cross_entropy", raising=False)
    unavailable = torch_chunked.PROVIDER.check(torch.device("cpu"), Case(tokens=8, hidden=4, vocab=16))
    assert unavailable.status == "missing" and "2.13" in unavailable.reason
