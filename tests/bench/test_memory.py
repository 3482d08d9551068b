import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import make_inputs
from xtf_kernels.bench.memory import CPU_METHOD
from xtf_kernels.bench.memory import allocation_peak_bytes
from xtf_kernels.bench.memory import current_rss_bytes
from xtf_kernels.bench.memory import measure_peak
from xtf_kernels.bench.memory import peak_rss_bytes

MIB = 2**20


def test_allocation_peak_is_the_high_water_mark_of_live_tensors():
    def step():
        a = torch.empty(MIB, dtype=torch.uint8)
        b = torch.empty(2 * MIB, dtype=torch.uint8)  # 3 MiB live here
        del a
        c = torch.empty(MIB // 2, dtype=torch.uint8)  # 2.5 MiB live
        return b, c

    assert allocation_peak_bytes(step) == 3 * MIB


def test_allocation_peak_sees_inside_custom_ops():
    # the fused op's chunk buffer lives only inside the custom op: chunk_size rows x V x 4 bytes
    import xtf_kernels

    hidden = torch.randn(64, 8)
    weight = torch.randn(4096, 8)
    targets = torch.randint(0, 4096, (64,))
    peak = allocation_peak_bytes(lambda: xtf_kernels.token_logprobs(hidden, weight, targets, chunk_size=32))
    assert peak >= 32 * 4096 * 4
    assert peak < 64 * 4096 * 4  # never the whole (N, V) logits


def test_measure_peak_counts_the_steps_gradients_not_old_ones():
    case = Case(tokens=64, hidden=32, vocab=512, dtype="float32")
    inputs = make_inputs(case, "cpu")

    def step():
        inputs.clear_grads()
        (inputs.hidden @ inputs.weight.t()).sum().backward()

    step()  # leaves gradients behind, which measure_peak must free first
    peak = measure_peak(step, inputs)
    logits = 64 * 512 * 4
    grads = (64 * 32 + 512 * 32) * 4
    assert peak.method == CPU_METHOD
    assert peak.extra_bytes >= logits + grads
    assert peak.extra_bytes < 4 * logits + 2 * grads
    assert peak.peak_bytes == inputs.nbytes + peak.extra_bytes


def test_rss_figures():
    now = current_rss_bytes()
    assert now is None or now > 0
    assert peak_rss_bytes() >= (now or 0) // 2
