import pytest

from xtf_kernels.bench.providers import PROVIDERS
from xtf_kernels.bench.suites import SUITES
from xtf_kernels.bench.suites import suite


def test_gpu_suite_is_the_side_by_side_case_set():
    entries = suite("gpu")
    shapes = [(e.case.model, e.case.tokens, e.case.mode, e.case.keep, e.case.dtype) for e in entries]
    assert shapes == [
        ("llama3-8b", 4096, "fwd_bwd", 1.0, "bfloat16"),
        ("llama3-8b", 16384, "fwd_bwd", 1.0, "bfloat16"),
        ("gemma2-2b", 8192, "fwd_bwd", 1.0, "bfloat16"),
        ("llama3-8b", 16384, "frozen", 1.0, "bfloat16"),
        ("llama3-8b", 16384, "fwd_bwd", 0.6, "bfloat16"),
        ("llama3-8b", 16384, "fwd", 1.0, "bfloat16"),
    ]
    assert entries[2].case.softcap == 30.0 and (entries[2].case.hidden, entries[2].case.vocab) == (2304, 256000)
    assert set(entries[0].providers) == set(PROVIDERS)


def test_cpu_targets_suite_shapes():
    entries = suite("cpu-targets")
    assert [(e.case.tokens, e.case.hidden, e.case.vocab, e.case.keep, e.case.dtype) for e in entries] == [
        (8192, 512, 128256, 1.0, "float32"), (8192, 512, 128256, 0.4, "float32"), (4096, 512, 128256, 1.0, "float32")
    ]
    assert "torch-chunked" in entries[2].providers


def test_every_suite_names_known_providers_and_unknown_suites_fail():
    for name in SUITES:
        for entry in suite(name):
            assert set(entry.providers) <= set(PROVIDERS)
    with pytest.raises(ValueError, match="cpu-quick"):
        suite("tpu")


def test_gpu_run_suite_covers_both_sizes_with_every_provider_and_the_variants():
    entries = suite("gpu-run")
    assert [(e.case.tokens, e.case.mode, e.case.keep) for e in entries] == [
        (4096, "fwd_bwd", 1.0), (16384, "fwd_bwd", 1.0), (16384, "frozen", 1.0), (16384, "fwd_bwd", 0.6),
        (16384, "fwd", 1.0),
    ]
    assert all(e.case.model == "llama3-8b" and e.case.dtype == "bfloat16" for e in entries)
    assert set(entries[0].providers) == set(entries[1].providers) == set(PROVIDERS)
    assert {"xtf-auto", "cce", "cce-exact", "liger"} <= set(entries[2].providers)


def test_dry_run_suite_is_a_tiny_cpu_case():
    (entry,) = suite("dry-run")
    assert entry.case.tokens * entry.case.hidden * entry.case.vocab <= 2**20
    assert {"xtf-torch", "cce-exact"} <= set(entry.providers)
