import pytest
import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.providers import PROVIDERS
from xtf_kernels.bench.providers import get_provider
from xtf_kernels.bench.providers import select_providers

CPU = torch.device("cpu")
CASE = Case(tokens=8, hidden=4, vocab=16, dtype="float32")


def test_table_order_puts_xtf_first():
    families = [p.family for p in PROVIDERS.values()]
    assert families == sorted(families, key=lambda f: f != "xtf")
    assert [p.name for p in select_providers(["torch-materialised", "xtf-torch"])] == ["xtf-torch",
                                                                                        "torch-materialised"]


def test_unknown_provider():
    with pytest.raises(ValueError, match="xtf-torch"):
        get_provider("nope")


def test_gpu_only_providers_say_why_on_cpu():
    for name in ("xtf-triton-fused", "xtf-triton-chunked", "xtf-cuda", "liger", "cce", "cce-exact"):
        unavailable = PROVIDERS[name].check(CPU, CASE)
        assert unavailable is not None and unavailable.status == "missing" and unavailable.reason, name


def test_cpu_runnable_providers():
    for name in ("xtf-auto", "xtf-torch", "torch-chunked", "torch-compile", "torch-materialised"):
        assert PROVIDERS[name].check(CPU, CASE) is None, name


def test_triton_paths_are_set_through_the_environment():
    assert dict(PROVIDERS["xtf-triton-fused"].env) == {"XTF_TRITON_PATH": "fused"}
    assert dict(PROVIDERS["xtf-triton-chunked"].env) == {"XTF_TRITON_PATH": "chunked"}
