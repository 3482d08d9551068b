"""TRL's fused lm_head (``add_fused_lm_head`` + ``fused_lm_head=True``) on a patched model: served by xtf's ops, with
TRL's own outputs, gradients and loss; either order of patching; and a loud fallback for what xtf cannot serve."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.helpers import assert_close
from tests.integrations.op_counter import XtfOpCounter
from tests.integrations.tiny_models import batch
from tests.integrations.tiny_models import tiny_model
from tests.integrations.tiny_models import twin

pytest.importorskip("transformers")
trl_utils = pytest.importorskip("trl.trainer.utils")

from xtf_kernels.integrations import bypass  # noqa: E402
from xtf_kernels.integrations.transformers import apply_xtf_kernels  # noqa: E402
from xtf_kernels.integrations.transformers import remove_xtf_kernels  # noqa: E402

ALL_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _outputs_and_grads(model, inputs, *, entropy_weight=0.3):
    """TRL's outputs of one fused call and the gradients of loss + entropy_weight * mean entropy."""
    model.zero_grad(set_to_none=True)
    with XtfOpCounter() as ops:
        out = model(**inputs, fused_lm_head=True)
        objective = out.loss
        if out.entropy is not None:
            objective = objective + entropy_weight * out.entropy.sum() / out.label_mask.sum()
        objective.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads, ops


@pytest.mark.parametrize(
    ("arch", "overrides", "temperature"),
    [
        ("llama", {}, 1.0),
        ("gemma2", {}, 0.7),  # final-logit softcap 0.5 and a temperature
        ("qwen2", {"tie_word_embeddings": True}, 1.3),
    ],
)
def test_every_trl_output_and_gradient_matches_trls_own_kernel(arch, overrides, temperature):
    reference = tiny_model(arch, **overrides)
    patched = apply_xtf_kernels(twin(reference))
    for model in (reference, patched):
        trl_utils.add_fused_lm_head(model, temperature=temperature, outputs=ALL_OUTPUTS)
    inputs = batch(3, 11)
    expected, expected_grads, reference_ops = _outputs_and_grads(reference, inputs)
    actual, actual_grads, ops = _outputs_and_grads(patched, inputs)
    assert reference_ops.total == 0
    # Forward: token_logprobs, plus the forward-only pass at T / 2 for log_sum_sq_probs; backward: head_backward.
    assert ops.calls["token_logprobs"] == 2 and ops.calls["head_backward"] == 1, ops.calls
    assert type(actual) is type(expected)
    assert torch.equal(actual.label_mask, expected.label_mask)
    assert torch.equal(actual.is_top1, expected.is_top1)
    for field in ("loss", "log_probs", "entropy", "log_sum_sq_probs", "mean_logits"):
        assert_close(getattr(actual, field), getattr(expected, field), msg=field)
    assert actual.log_probs.requires_grad and actual.entropy.requires_grad
    assert not actual.mean_logits.requires_grad and not actual.log_sum_sq_probs.requires_grad
    assert set(actual_grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, grad=True, msg=name)


def test_a_logit_scaled_model_matches_trl_through_the_fused_head():
    """Cohere multiplies its logits by config.logit_scale; TRL and the patched model both apply it."""
    import transformers

    config = transformers.CohereConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, logit_scale=0.25,
    )
    torch.manual_seed(0)
    reference = transformers.CohereForCausalLM(config).train()
    patched = apply_xtf_kernels(twin(reference))
    for model in (reference, patched):
        trl_utils.add_fused_lm_head(model, temperature=0.9, outputs=("log_probs", "entropy", "is_top1"))
    inputs = batch(2, 9)
    expected, expected_grads, _ = _outputs_and_grads(reference, inputs)
    actual, actual_grads, ops = _outputs_and_grads(patched, inputs)
    assert ops.calls["token_logprobs"] == 1
    for field in ("loss", "log_probs", "entropy"):
        assert_close(getattr(actual, field), getattr(expected, field), msg=field)
    assert torch.equal(actual.is_top1, expected.is_top1)
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, grad=True, msg=name)


def test_patching_after_trl_added_its_head_and_shift_labels_and_num_items():
    reference = tiny_model("llama")
    patched = twin(reference)
    for model in (reference, patched):
        trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    apply_xtf_kernels(patched)  # TRL's forward was installed first: it is taken over, not left in front
    inputs = batch(3, 11)
    shift = torch.cat([inputs["labels"][:, 1:], torch.full((3, 1), -100)], dim=1)
    call = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], shift_labels=shift,
                num_items_in_batch=torch.tensor(40))
    expected, expected_grads, _ = _outputs_and_grads(reference, call)
    actual, actual_grads, ops = _outputs_and_grads(patched, call)
    assert ops.calls["token_logprobs"] == 1
    assert actual.log_probs.shape == shift.shape
    assert_close(actual.loss, expected.loss, msg="loss / num_items_in_batch")
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, grad=True, msg=name)
    # Plain calls still go through the patched forward (fused loss in training, logits in eval).
    assert patched(**inputs).logits is None
    remove_xtf_kernels(patched)  # TRL's own head comes back
    restored, _, ops_after = _outputs_and_grads(patched, call)
    assert ops_after.total == 0
    assert_close(restored.loss, expected.loss, msg="after remove_xtf_kernels")


def test_token_weights_scale_log_probs_and_weight_zero_drops_the_token():
    model = apply_xtf_kernels(tiny_model("llama"))
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    inputs = batch(3, 11)
    weights = torch.rand(3, 11, generator=torch.Generator().manual_seed(3)) * 2
    weights[0, 5] = 0.0
    plain = model(**inputs, fused_lm_head=True)
    weighted = model(**inputs, token_weights=weights, fused_lm_head=True)
    w = weights[:, 1:]
    assert_close(weighted.log_probs, plain.log_probs * w, msg="log_probs")
    assert not weighted.label_mask[0, 4] and plain.label_mask[0, 4]
    assert weighted.entropy[0, 4] == 0 and not weighted.is_top1[0, 4]
    expected_loss = -(plain.log_probs * w).sum() / weighted.label_mask.sum()
    assert_close(weighted.loss, expected_loss, msg="loss")
    with pytest.raises(ValueError, match="token_weights"):
        model(**inputs, token_weights=weights[:, :4], fused_lm_head=True)


def test_an_output_xtf_does_not_know_falls_back_to_trl_with_one_warning():
    bypass.reset_warnings()
    reference = tiny_model("llama")
    patched = apply_xtf_kernels(twin(reference))
    for model in (reference, patched):
        trl_utils.add_fused_lm_head(model, outputs=("log_probs", "top_k_future_output"))
    inputs = batch()
    with pytest.warns(bypass.XtfBypassWarning, match="top_k_future_output.*TRL's own kernel"):
        actual, _, ops = _outputs_and_grads(patched, inputs)
    assert ops.total == 0
    expected, _, _ = _outputs_and_grads(reference, inputs)
    assert_close(actual.loss, expected.loss, msg="fallback loss")
    with warnings.catch_warnings():
        warnings.simplefilter("error", bypass.XtfBypassWarning)
        _outputs_and_grads(patched, inputs)  # once per path: no second warning


def test_options_trl_cannot_honour_are_refused_and_fused_lm_head_needs_trl():
    model = apply_xtf_kernels(tiny_model("llama"), label_smoothing=0.1)
    with pytest.raises(TypeError, match="add_fused_lm_head"):
        model(**batch(), fused_lm_head=True)
    trl_utils.add_fused_lm_head(model)
    with pytest.raises(ValueError, match="label_smoothing, z_loss and loss_fn"):
        model(**batch(), fused_lm_head=True)


def test_a_training_forward_without_labels_warns_once_naming_the_caller():
    bypass.reset_warnings()
    model = apply_xtf_kernels(tiny_model("llama"))
    inputs = batch()
    with pytest.warns(bypass.XtfBypassWarning, match=r"full logits for training \(called from test_trl_fused_head"):
        logits = model(input_ids=inputs["input_ids"]).logits
    assert logits.shape[-1] == 96
    with warnings.catch_warnings():
        warnings.simplefilter("error", bypass.XtfBypassWarning)
        model(input_ids=inputs["input_ids"])  # the same path does not warn twice
        model(**inputs).loss.backward()  # the fused path never warns
        with torch.no_grad():
            model(input_ids=inputs["input_ids"])  # generation-like calls are not training
        model.eval()
        model(**inputs)  # eval returns logits on purpose
        remove_xtf_kernels(model)
        model.train()
        bypass.reset_warnings()
        model(input_ids=inputs["input_ids"])  # an unpatched model is not watched


def test_grpo_cast_lm_head_to_fp32_replaces_the_heads_forward_and_still_runs_xtf():
    reference = tiny_model("llama")
    patched = apply_xtf_kernels(twin(reference))
    for model in (reference, patched):
        head = model.lm_head  # what GRPOTrainer does with cast_lm_head_to_fp32=True
        head.forward = lambda hidden, head=head: torch.nn.functional.linear(hidden.float(), head.weight.float())
        trl_utils.add_fused_lm_head(model, temperature=0.9, cast_lm_head_to_fp32=True, outputs=("log_probs", "entropy"))
    inputs = batch()
    expected, expected_grads, _ = _outputs_and_grads(reference, inputs)
    actual, actual_grads, ops = _outputs_and_grads(patched, inputs)
    assert ops.calls["token_logprobs"] == 1
    assert_close(actual.loss, expected.loss, msg="loss")
    assert_close(actual.entropy, expected.entropy, msg="entropy")
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, grad=True, msg=name)


def test_a_trl_head_whose_options_cannot_be_read_is_left_to_trl_with_one_warning():
    """A TRL whose _fused_forward keeps its options elsewhere (an untested version) runs its own path, loudly."""
    import types

    bypass.reset_warnings()
    namespace = {"__name__": "trl.trainer.utils"}
    exec(compile("def _fused_forward(self, *args, **kwargs):\n    return 'trl'\n", "utils.py", "exec"), namespace)
    model = apply_xtf_kernels(tiny_model("llama"))
    with pytest.warns(bypass.XtfBypassWarning, match="untested TRL version"):
        model.forward = types.MethodType(namespace["_fused_forward"], model)
    assert model(fused_lm_head=True) == "trl"


def test_instance_forward_wrappers_stay_in_front_of_the_patch_and_one_set_before_it_is_refused():
    import types

    from xtf_kernels.errors import UnsupportedModelError

    model = apply_xtf_kernels(tiny_model("llama"))
    calls = []
    inner = model.forward.__func__

    def wrapper(self, *args, **kwargs):  # what accelerate's autocast / fp32-output wrappers look like
        calls.append(1)
        return inner(self, *args, **kwargs)

    model.forward = types.MethodType(wrapper, model)
    with XtfOpCounter() as ops:
        assert model(**batch()).logits is None
    assert calls == [1] and ops.calls["linear_cross_entropy"] == 1
    del model.forward
    assert model.forward.__func__ is inner

    plain = tiny_model("llama")
    plain.forward = types.MethodType(lambda self, **kwargs: None, plain)
    with pytest.raises(UnsupportedModelError, match="replaced on the instance"):
        apply_xtf_kernels(plain)
