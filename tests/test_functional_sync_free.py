"""The sync-free mode (``max_kept_tokens=K``) for CUDA graphs: the compacting mode's values against float64
references, exactly zero loss and gradient for dropped rows, no host synchronisation anywhere in the ops
(proved by tracing the ops' own implementations and by watching every aten op they run), device-side poison
instead of ValueErrors, and the Triton backend under the interpreter at tiny shapes."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xtf_kernels as xk
from tests.cases import make_case
from tests.helpers import accumulation_dtype
from tests.helpers import assert_close
from tests.reference import reference_linear_cross_entropy
from tests.reference import reference_token_logprobs_outputs
from xtf_kernels.ops import custom_ops

LEAD, H, V = (47,), 31, 123  # odd shapes
# Every option of the loss on at once (class weights, logit scale, softcap, smoothing, z-loss, bias).
LOSS_OPTIONS = dict(softcap=4.0, logit_scale=0.9, label_smoothing=0.1, z_loss=1e-3)


def _kept(case) -> int:
    keep = case.targets != -100
    if case.token_weights is not None:
        keep = keep & (case.token_weights != 0)
    return int(keep.sum())


def _bounds(case) -> dict[str, int]:
    """K >= N (mask in place), K just above the kept count (gather into slots)."""
    return {"masked": case.targets.numel() + 5, "gathered": _kept(case) + 3}


def _loss(case, **kwargs):
    return xk.linear_cross_entropy(case.hidden, case.weight, case.targets, bias=case.bias,
                                   token_weights=case.token_weights, class_weights=case.class_weights,
                                   **LOSS_OPTIONS, **kwargs)


@pytest.mark.parametrize("chunk_size", [None, 16])  # Triton: 16 selects the chunked path, else fused (< 256 rows)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("mode", ["masked", "gathered"])
def test_loss_matches_float64_reference_and_compacting_mode(impl, reduction, mode, chunk_size):
    for dtype in impl.dtypes[:1] + ((torch.float64,) if impl.backend == "torch" else ()):
        case = make_case(LEAD, H, V, dtype=dtype, device=impl.device, bias=True, token_weights=True,
                         class_weights=True)
        bound = _bounds(case)[mode]
        upstream = torch.randn(LEAD, dtype=torch.float64, device=impl.device)
        loss = _loss(case, reduction=reduction, backend=impl.backend, chunk_size=chunk_size, max_kept_tokens=bound)
        weight_up = upstream.to(loss.dtype) if reduction == "none" else torch.ones_like(loss)
        grads = torch.autograd.grad(loss, case.leaves(), weight_up)

        ref_leaves = [x.detach().double().requires_grad_() for x in case.leaves()]
        ref = reference_linear_cross_entropy(ref_leaves[0], ref_leaves[1], case.targets, bias=ref_leaves[2],
                                             token_weights=case.token_weights, class_weights=case.class_weights,
                                             reduction=reduction, **LOSS_OPTIONS)
        ref_grads = torch.autograd.grad(ref, ref_leaves, upstream if reduction == "none" else None)
        assert_close(loss, ref, accumulation_dtype(dtype), msg=f"{mode} {reduction} loss")
        for name, g, r in zip(("hidden", "weight", "bias"), grads, ref_grads):
            assert_close(g, r, dtype, grad=True, msg=f"{mode} {reduction} grad {name}")

        compacting = _loss(case, reduction=reduction, backend=impl.backend, chunk_size=chunk_size)
        compacting_grads = torch.autograd.grad(compacting, case.leaves(), weight_up)
        assert_close(loss, compacting, accumulation_dtype(dtype), msg="vs compacting")
        for g, c in zip(grads, compacting_grads):
            assert_close(g, c, dtype, grad=True, msg="grad vs compacting")


@pytest.mark.parametrize("mode", ["masked", "gathered"])
def test_token_logprobs_match_float64_reference(impl, mode):
    dtype = impl.dtypes[0]
    case = make_case(LEAD, H, V, dtype=dtype, device=impl.device, bias=True)
    bound = _bounds(case)[mode]
    out = xk.token_logprobs(case.hidden, case.weight, case.targets, bias=case.bias, temperature=0.7, softcap=5.0,
                            logit_scale=1.1, return_entropy=True, return_lse=True, return_predicted_tokens=True,
                            return_mean_logit=True, backend=impl.backend, max_kept_tokens=bound)
    up = [torch.randn(LEAD, device=impl.device) for _ in range(3)]
    grads = torch.autograd.grad(sum((o * u).sum() for o, u in zip(out[:3], up)), case.leaves())

    ref_leaves = [x.detach().double().requires_grad_() for x in case.leaves()]
    ref = reference_token_logprobs_outputs(ref_leaves[0], ref_leaves[1], case.targets, bias=ref_leaves[2],
                                           temperature=0.7, softcap=5.0, logit_scale=1.1)
    ref_grads = torch.autograd.grad(sum((r * u.double()).sum() for r, u in zip(ref[:3], up)), ref_leaves)
    for name, got, want in zip(("logprobs", "entropy", "lse"), out[:3], ref[:3]):
        assert_close(got, want, accumulation_dtype(dtype), msg=name)
    assert_close(out.mean_logit, ref[4], accumulation_dtype(dtype), msg="mean logit")
    assert torch.equal(out.predicted_tokens[case.targets == -100].cpu(),
                       torch.full_like(case.targets[case.targets == -100], -100).cpu())
    for name, g, r in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert_close(g, r, dtype, grad=True, msg=f"grad {name}")


@pytest.mark.parametrize("mode", ["masked", "gathered"])
def test_dropped_rows_get_exactly_zero_even_with_non_finite_padding(mode):
    """float64, so "exact" is exact: dropped rows' losses and hidden gradients are 0.0, and non-finite hidden
    states at dropped rows (padding garbage) change nothing, as when they are compacted away."""
    case = make_case(LEAD, H, V, dtype=torch.float64, bias=True, token_weights=True)
    dropped = (case.targets == -100) | (case.token_weights == 0)
    garbage = case.hidden.detach().clone()
    garbage[dropped] = float("nan")
    garbage[dropped.nonzero()[0, 0]] = float("inf")
    hidden = garbage.requires_grad_()
    leaves = (hidden, case.weight, case.bias)
    kwargs = dict(bias=case.bias, token_weights=case.token_weights, reduction="none", **LOSS_OPTIONS)
    loss = xk.linear_cross_entropy(hidden, case.weight, case.targets, max_kept_tokens=_bounds(case)[mode], **kwargs)
    upstream = torch.randn(LEAD, dtype=torch.float64)  # nonzero at dropped rows too
    grads = torch.autograd.grad(loss, leaves, upstream)
    assert torch.all(loss[dropped] == 0.0)
    assert torch.all(grads[0][dropped] == 0.0)
    expected = xk.linear_cross_entropy(hidden, case.weight, case.targets, **kwargs)
    expected_grads = torch.autograd.grad(expected, leaves, upstream)
    assert_close(loss, expected, torch.float64)
    for g, e in zip(grads, expected_grads):
        assert torch.isfinite(g).all()
        assert_close(g, e, torch.float64, grad=True)


# --------------------------------------------------------------------------------------------------
# no host synchronisation
# --------------------------------------------------------------------------------------------------

_OP_IMPLS = {
    "xtf::linear_cross_entropy": custom_ops.linear_cross_entropy_op,
    "xtf::head_backward": custom_ops.head_backward_op,
    "xtf::token_logprobs": custom_ops.token_logprobs_op,
}
# Ops that copy a device value to the host, or whose output shape depends on the data (a sync on CUDA).
_SYNCING = {
    torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default, torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default, torch.ops.aten._unique2.default, torch.ops.aten.unique_dim.default,
    torch.ops.aten.unique_consecutive.default,
}


class HostSyncs(TorchDispatchMode):
    """Records every syncing aten op, inside the xtf custom ops too (their implementations run under this
    mode, where a plain dispatch mode would see only the op call), and counts the xtf ops run."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.xtf_calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "xtf":
            self.xtf_calls.append(func._schema.name)
            with self:
                return _OP_IMPLS[func._schema.name]._init_fn(*args, **kwargs)
        if func in _SYNCING:
            self.syncs.append(str(func))
        if func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        ):
            self.syncs.append("boolean-mask indexing")
        return func(*args, **kwargs)


def _no_tolist(monkeypatch):
    """Tensor.tolist reads device memory without an aten op: record every call to it."""
    calls = []
    original = torch.Tensor.tolist

    def tolist(self):
        calls.append("tolist")
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return calls


def _every_path(case, bound):
    """Mean with precomputed gradients, per-token losses (recomputing backward), token log-probs with
    entropy, lse, argmax and their backward, all through the functional API."""
    kwargs = dict(bias=case.bias, token_weights=case.token_weights, class_weights=case.class_weights,
                  num_items_in_batch=torch.tensor(30.0), max_kept_tokens=bound, **LOSS_OPTIONS)
    mean = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, return_token_accuracy=True, **kwargs)
    kwargs.pop("num_items_in_batch")
    per_token = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="none", **kwargs)
    lp = xk.token_logprobs(case.hidden, case.weight, case.targets, bias=case.bias, return_entropy=True,
                           return_lse=True, return_predicted_tokens=True, max_kept_tokens=bound)
    total = mean.loss + per_token.sum() + lp.logprobs.sum() + lp.entropy.sum() + 0.1 * lp.lse.sum()
    torch.autograd.grad(total, case.leaves())


@pytest.mark.parametrize("mode", ["masked", "gathered"])
def test_no_host_sync_inside_the_ops(monkeypatch, mode):
    case = make_case(LEAD, H, V, bias=True, token_weights=True, class_weights=True)
    bound = _bounds(case)[mode]
    tolist_calls = _no_tolist(monkeypatch)
    with HostSyncs() as probe:
        _every_path(case, bound)
    assert probe.syncs == [] and tolist_calls == []
    # Our ops ran (forward and both recomputing backwards), not some other path.
    assert probe.xtf_calls.count("xtf::linear_cross_entropy") == 2
    assert probe.xtf_calls.count("xtf::token_logprobs") == 1
    assert probe.xtf_calls.count("xtf::head_backward") == 2


def test_the_probe_sees_the_compacting_modes_sync(monkeypatch):
    """The same probe flags the default mode's one host sync, so the test above can fail."""
    case = make_case(LEAD, H, V, bias=True, token_weights=True)
    tolist_calls = _no_tolist(monkeypatch)
    with HostSyncs():
        xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights)
    assert tolist_calls == ["tolist"]


def _op_arguments(case, bound, backend="torch"):
    h, w, b = (x.detach() for x in case.leaves())
    return (h, w, b, case.targets, case.token_weights, case.class_weights, None, -100, "mean", 4.0, 0.9, 0.1, 1e-3,
            True, True, True, True, True, backend, 16, bound)


@pytest.mark.parametrize("mode", ["masked", "gathered"])
@torch._dynamo.config.patch(capture_scalar_outputs=False, capture_dynamic_output_shape_ops=False)
def test_op_implementations_trace_as_one_graph_without_scalar_reads(mode):
    """torch.compile(fullgraph=True) through the ops' own Python implementations (compaction, chunk loop, row
    math; chunk 16 gives several chunks) with scalar outputs and data-dependent shapes not capturable: any
    host read would be a graph break, hence an error. The compacting mode fails the same trace."""
    case = make_case(LEAD, H, V, bias=True, token_weights=True, class_weights=True)
    custom_ops.get_backend("torch")  # loaded once eagerly; later calls are a traceable dict lookup
    args = _op_arguments(case, _bounds(case)[mode])
    torch._dynamo.reset()
    compiled = torch.compile(custom_ops.linear_cross_entropy_op._init_fn, backend="eager", fullgraph=True)
    for got, want in zip(compiled(*args), custom_ops.linear_cross_entropy_op._init_fn(*args)):
        assert torch.equal(got, want)

    lse = custom_ops.linear_cross_entropy_op(*args[:8], "none", *args[9:])[1]
    g = torch.randn(LEAD)
    backward_args = (*args[:4], g, case.class_weights, lse, None, g, None, None, None, -100, 4.0, 0.9, 1.0, 0.1,
                     1e-3, True, True, True, "torch", 16, args[-1])
    compiled_backward = torch.compile(custom_ops.head_backward_op._init_fn, backend="eager", fullgraph=True)
    for got, want in zip(compiled_backward(*backward_args), custom_ops.head_backward_op._init_fn(*backward_args)):
        assert torch.equal(got, want)

    torch._dynamo.reset()
    compacting = torch.compile(custom_ops.linear_cross_entropy_op._init_fn, backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="data-dependent|Unsupported|graph break"):
        compacting(*args[:-1], 0)


@torch._dynamo.config.patch(capture_scalar_outputs=False)
def test_compiled_step_has_no_graph_break_and_matches_eager():
    torch._dynamo.reset()
    case = make_case(LEAD, H, V, bias=True, token_weights=True)

    def step(hidden, weight, bias):
        loss = xk.linear_cross_entropy(hidden, weight, case.targets, bias=bias, token_weights=case.token_weights,
                                       max_kept_tokens=40, **LOSS_OPTIONS)
        lp = xk.token_logprobs(hidden, weight, case.targets, bias=bias, max_kept_tokens=47)
        return loss + lp.sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = compiled(*case.leaves())
    want = step(*case.leaves())
    assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, case.leaves()), torch.autograd.grad(want, case.leaves())):
        assert_close(g, w, grad=True)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["masked", "gathered"])
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_cuda_graph_captures_a_training_step_and_replays_new_data(backend, mode):
    """On a GPU: no synchronising call at all (torch.cuda.set_sync_debug_mode("error")), then the loss and its
    gradients captured in one CUDA graph and replayed on new hidden states, targets and weights (new kept
    tokens), matching the compacting mode run eagerly on the same data."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from xtf_kernels.errors import BackendUnavailableError
    from xtf_kernels.ops.registry import resolve_backend

    device = torch.device("cuda")
    try:
        resolve_backend(backend, device)
    except BackendUnavailableError as error:
        pytest.skip(str(error))
    case = make_case(LEAD, H, V, device="cuda", bias=True, token_weights=True, seed=1)
    fresh = make_case(LEAD, H, V, device="cuda", bias=True, token_weights=True, seed=2)
    bound = {"masked": LEAD[0], "gathered": LEAD[0] - 5}[mode]  # about 64% of the tokens are kept
    hidden, weight, bias = (x.detach().clone().requires_grad_() for x in case.leaves())
    targets, token_weights = case.targets.clone(), case.token_weights.clone()

    def step(max_kept_tokens=bound):
        loss = xk.linear_cross_entropy(hidden, weight, targets, bias=bias, token_weights=token_weights,
                                       softcap=4.0, z_loss=1e-3, backend=backend, max_kept_tokens=max_kept_tokens)
        lp = xk.token_logprobs(hidden, weight, targets, bias=bias, backend=backend, max_kept_tokens=max_kept_tokens)
        total = loss + 0.1 * lp.sum()
        return (total, *torch.autograd.grad(total, (hidden, weight, bias)))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: Triton compiles, the extension loads, the allocator fills
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        for static, new in zip((hidden, weight, bias, targets, token_weights),
                               (*fresh.leaves(), fresh.targets, fresh.token_weights)):
            static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    expected = step(max_kept_tokens=None)
    for name, got, want in zip(("loss", "hidden", "weight", "bias"), captured, expected):
        assert_close(got, want, grad=name != "loss", msg=f"replayed {name}")


# --------------------------------------------------------------------------------------------------
# device-side checks instead of ValueErrors
# --------------------------------------------------------------------------------------------------


def test_bad_values_poison_their_rows_instead_of_raising():
    case = make_case(LEAD, H, V, token_weights=True)
    targets, weights = case.targets.clone(), case.token_weights.clone()
    targets[3], weights[5], weights[8] = V + 4, -1.0, float("nan")
    loss = xk.linear_cross_entropy(case.hidden, case.weight, targets, token_weights=weights, reduction="none",
                                   max_kept_tokens=47)
    poisoned = torch.zeros(LEAD, dtype=torch.bool)
    poisoned[[3, 5, 8]] = True
    assert torch.isnan(loss[poisoned]).all() and torch.isfinite(loss[~poisoned]).all()
    grad_hidden = torch.autograd.grad(loss[~poisoned].sum(), case.hidden)[0]
    assert torch.all(grad_hidden[poisoned] == 0.0)
    mean = xk.linear_cross_entropy(case.hidden, case.weight, targets, token_weights=weights, max_kept_tokens=47)
    assert torch.isnan(mean)
    lp = xk.token_logprobs(case.hidden, case.weight, targets, max_kept_tokens=47)
    assert torch.isnan(lp[3]) and torch.isfinite(lp[torch.arange(47) != 3]).all()


def test_more_kept_tokens_than_the_bound_poisons_everything():
    case = make_case(LEAD, H, V)
    kept = _kept(case)
    short = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="none", max_kept_tokens=kept - 1)
    assert torch.isnan(short).all()
    exact = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="none", max_kept_tokens=kept)
    assert torch.isfinite(exact).all()
    class_weights = torch.ones(V)
    class_weights[7] = -1.0
    bad_class = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, class_weights=class_weights,
                                        max_kept_tokens=kept)
    assert torch.isnan(bad_class)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "all"])
def test_max_kept_tokens_is_a_positive_int(bad):
    case = make_case(LEAD, H, V)
    error = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
    with pytest.raises(error, match="max_kept_tokens"):
        xk.linear_cross_entropy(case.hidden, case.weight, case.targets, max_kept_tokens=bad)
    with pytest.raises(error, match="max_kept_tokens"):
        xk.token_logprobs(case.hidden, case.weight, case.targets, max_kept_tokens=bad)
    with pytest.raises(error, match="max_kept_tokens"):
        xk.LinearCrossEntropyLoss(max_kept_tokens=bad)


def test_module_passes_the_bound_on():
    case = make_case((3, 16), 8, 29, token_weights=True)
    module = xk.LinearCrossEntropyLoss(shift=True, z_loss=1e-3, max_kept_tokens=48)
    assert "max_kept_tokens=48" in repr(module)
    got = module(case.hidden, case.weight, case.targets, case.token_weights)
    want = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights,
                                   shift=True, z_loss=1e-3)
    assert_close(got, want)
