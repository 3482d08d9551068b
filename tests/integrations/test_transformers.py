"""apply_xtf_kernels against the unpatched transformers models: loss and every gradient, logits in eval,
batch columns, unsupported models, PEFT, and the memory the fused path saves."""

from __future__ import annotations

import copy
import functools
import inspect
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import xtf_kernels
from tests.helpers import assert_close
from tests.integrations.memory_profile import profile_memory
from tests.integrations.op_counter import XtfOpCounter
from tests.integrations.tiny_models import ARCHITECTURES
from tests.integrations.tiny_models import VOCAB
from tests.integrations.tiny_models import batch
from tests.integrations.tiny_models import tiny_model
from tests.integrations.tiny_models import twin

pytest.importorskip("transformers")

from xtf_kernels.integrations.transformers import UnsupportedModelError  # noqa: E402
from xtf_kernels.integrations.transformers import apply_xtf_kernels  # noqa: E402
from xtf_kernels.integrations.transformers import remove_xtf_kernels  # noqa: E402


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(actual_model, expected_model):
    actual, expected = _grads(actual_model), _grads(expected_model)
    assert actual.keys() == expected.keys()
    assert expected, "no parameter received a gradient"
    for name, grad in expected.items():
        assert_close(actual[name], grad, grad=True, msg=name)


def _patched_pair(arch: str, **options):
    reference = tiny_model(arch)
    patched = apply_xtf_kernels(twin(reference), **options)
    return reference, patched


def _shifted_ce(logits, labels, weights=None):
    """float64 per-token loss of predicting labels[t + 1] from position t, 0 where labels are -100."""
    logits = logits[:, :-1].double()
    targets = labels[:, 1:]
    keep = targets != -100
    ce = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none") * keep
    w = keep.double() if weights is None else weights[:, 1:].double() * keep
    return ce, w


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("num_items", [None, 23])
def test_training_loss_and_every_gradient_match_the_unpatched_model(arch, num_items):
    reference, patched = _patched_pair(arch)
    inputs = batch()
    extra = {} if num_items is None else dict(num_items_in_batch=torch.tensor(num_items))
    expected = reference(**inputs, **extra)
    actual = patched(**inputs, **extra)
    assert actual.logits is None  # training with labels: no logits
    assert_close(actual.loss, expected.loss, msg="loss")
    expected.loss.backward()
    actual.loss.backward()
    _assert_same_grads(patched, reference)
    if arch == "mixtral":
        assert actual.aux_loss is not None and torch.equal(actual.aux_loss, expected.aux_loss)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_eval_and_no_labels_run_the_models_own_forward(arch):
    reference, patched = _patched_pair(arch)
    reference.eval()
    patched.eval()
    inputs = batch()
    with torch.no_grad():
        expected, actual = reference(**inputs), patched(**inputs)
        assert torch.equal(actual.logits, expected.logits)
        assert torch.equal(actual.loss, expected.loss)
        inputs.pop("labels")
        assert torch.equal(patched(**inputs).logits, reference(**inputs).logits)
        prompt = inputs["input_ids"][:1, :4]
        generated = patched.generate(prompt, max_new_tokens=3, do_sample=False)
        assert torch.equal(generated, reference.generate(prompt, max_new_tokens=3, do_sample=False))


def test_skip_logits_forces_the_fused_path_on_and_off():
    reference, patched = _patched_pair("llama")
    inputs = batch()
    kept = patched(**inputs, skip_logits=False)
    assert kept.logits is not None and torch.equal(kept.logits, reference(**inputs).logits)
    patched.eval()
    fused = patched(**inputs, skip_logits=True)
    assert fused.logits is None
    assert_close(fused.loss, reference.eval()(**inputs).loss)


def test_token_weights_weight_each_label_position_and_follow_the_label_shift():
    reference, patched = _patched_pair("qwen3")
    inputs = batch()
    weights = torch.rand(inputs["labels"].shape, generator=torch.Generator().manual_seed(3))
    weights[0, 4] = 0.0
    logits = reference(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    ce, w = _shifted_ce(logits, inputs["labels"], weights)
    actual = patched(**inputs, token_weights=weights)
    assert_close(actual.loss, (ce * w).sum() / w.sum(), msg="weighted mean")
    actual_ga = patched(**inputs, token_weights=weights, num_items_in_batch=17)
    assert_close(actual_ga.loss, (ce * w).sum() / 17, msg="weighted sum / num_items")
    # An eval batch carrying token_weights: the logits and the same weighted loss.
    patched.eval()
    evaluated = patched(**inputs, token_weights=weights)
    assert torch.equal(evaluated.logits, reference.eval()(**{k: v for k, v in inputs.items() if k != "labels"}).logits)
    assert_close(evaluated.loss, (ce * w).sum() / w.sum(), msg="eval weighted mean")


def test_bool_token_weights_equal_labels_set_to_ignore_index():
    _, patched = _patched_pair("llama")
    inputs = batch()
    mask = torch.rand(inputs["labels"].shape, generator=torch.Generator().manual_seed(4)) > 0.4
    masked_labels = inputs["labels"].masked_fill(~mask, -100)
    via_weights = patched(**inputs, token_weights=mask).loss
    via_labels = patched(**{**inputs, "labels": masked_labels}).loss
    assert_close(via_weights, via_labels)


def test_shift_labels_are_used_as_given():
    reference, patched = _patched_pair("mistral")
    inputs = batch()
    labels = inputs.pop("labels")
    shift_labels = torch.roll(labels, -2, dims=1)  # any alignment the caller chose
    expected = reference(**inputs, labels=labels, shift_labels=shift_labels)
    actual = patched(**inputs, labels=labels, shift_labels=shift_labels)
    assert_close(actual.loss, expected.loss)


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_return_dict_false_gives_loss_first(arch):
    reference, patched = _patched_pair(arch)
    inputs = batch()
    actual = patched(**inputs, return_dict=False)
    assert isinstance(actual, tuple)
    assert_close(actual[0], reference(**inputs).loss)  # Mixtral: the router aux loss included
    assert all(not (isinstance(t, torch.Tensor) and t.shape[-1:] == (VOCAB,)) for t in actual[1:])


def test_the_patched_forward_advertises_the_batch_columns_to_trainer():
    patched = apply_xtf_kernels(tiny_model("llama"), loss_columns=("ref_losses",))
    params = inspect.signature(patched.forward).parameters
    for name in ("input_ids", "labels", "token_weights", "ref_losses", "skip_logits"):
        assert name in params
    assert patched.accepts_loss_kwargs is True
    assert type(patched).__name__ == "LlamaForCausalLM"


def test_reapply_replaces_options_and_remove_restores_the_class():
    model = tiny_model("llama")
    original_class = type(model)
    apply_xtf_kernels(model, chunk_size=4)
    apply_xtf_kernels(model, chunk_size=8)
    assert model._xtf_options.chunk_size == 8 and type(model).__mro__[1] is original_class
    remove_xtf_kernels(model)
    assert type(model) is original_class and not hasattr(model, "_xtf_options")
    assert model(**batch()).logits is not None


def test_a_patched_model_survives_pickle_and_deepcopy():
    patched = apply_xtf_kernels(tiny_model("llama"), loss_columns=("ref_losses",))
    inputs = batch()
    expected = patched(**inputs).loss
    buffer = io.BytesIO()
    torch.save(patched, buffer)
    buffer.seek(0)
    for clone in (pickle.loads(pickle.dumps(patched)), copy.deepcopy(patched), torch.load(buffer, weights_only=False)):
        assert type(clone) is not type(patched) and type(clone).__mro__[1] is type(patched).__mro__[1]
        assert clone._xtf_options == patched._xtf_options
        out = clone(**inputs)
        assert out.logits is None and torch.equal(out.loss, expected)


def test_top_level_name_is_the_integration():
    assert xtf_kernels.apply_xtf_kernels is apply_xtf_kernels


# --------------------------------------------------------------------------------------------------
# loss_fn hook (RHO-1-style selective loss with a reference-loss column)
# --------------------------------------------------------------------------------------------------


def _selective_loss(hidden, weight, targets, *, ref_losses, keep_ratio, softcap=None):
    """Mean cross-entropy over the top keep_ratio of labelled tokens by excess loss (materialised)."""
    logits = hidden.float() @ weight.float().T
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    valid = targets != -100
    ce = F.cross_entropy(logits.flatten(0, -2), targets.flatten().clamp_min(0), reduction="none")
    excess = torch.where(valid.flatten(), ce.detach() - ref_losses.flatten(), -math.inf)
    keep = torch.topk(excess, math.ceil(keep_ratio * int(valid.sum()))).indices
    return ce[keep].mean()


@pytest.mark.parametrize("num_items", [None, 19])
def test_loss_fn_gets_shifted_columns_and_is_rescaled_for_gradient_accumulation(num_items):
    loss_fn = functools.partial(_selective_loss, keep_ratio=0.5)
    reference, patched = _patched_pair("gemma2", loss_fn=loss_fn, loss_columns=("ref_losses",))
    inputs = batch()
    ref_losses = torch.rand(inputs["labels"].shape, generator=torch.Generator().manual_seed(5)) * 4
    extra = {} if num_items is None else dict(num_items_in_batch=num_items)
    actual = patched(**inputs, ref_losses=ref_losses, **extra).loss

    logits = reference(**{k: v for k, v in inputs.items() if k != "labels"}).logits  # already softcapped
    ce, w = _shifted_ce(logits, inputs["labels"])
    valid = w.flatten() > 0
    excess = torch.where(valid, ce.detach().flatten() - ref_losses[:, 1:].flatten().double(), -math.inf)
    keep = torch.topk(excess, math.ceil(0.5 * int(valid.sum()))).indices
    expected = ce.flatten()[keep].mean()
    if num_items is not None:
        expected = expected * valid.sum() / num_items
    assert_close(actual, expected, msg="selective loss")

    actual.backward()
    expected.backward()
    _assert_same_grads(patched, reference)

    patched.eval()  # eval keeps the plain cross-entropy
    assert_close(patched(**inputs, ref_losses=ref_losses, skip_logits=True).loss, reference.eval()(**inputs).loss)


def test_rho1_loss_plugs_in_through_loss_fn():
    """The patched model's loss equals rho1_loss called by hand on the final hidden states, shifted here."""
    rho1 = pytest.importorskip("xtf_kernels.methods.rho1")
    reference, patched = _patched_pair(
        "gemma2", loss_fn=functools.partial(rho1.rho1_loss, keep_ratio=0.6), loss_columns=("ref_losses",)
    )
    inputs = batch()
    ref_losses = torch.rand(inputs["labels"].shape, generator=torch.Generator().manual_seed(6)) * 4
    loss = patched(**inputs, ref_losses=ref_losses).loss
    hidden = reference.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    expected = rho1.rho1_loss(
        hidden[:, :-1], reference.lm_head.weight, inputs["labels"][:, 1:], ref_losses[:, 1:], keep_ratio=0.6,
        softcap=reference.config.final_logit_softcapping,
    )
    assert_close(loss, expected)
    loss.backward()
    expected.backward()
    _assert_same_grads(patched, reference)


# --------------------------------------------------------------------------------------------------
# refusals and bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config_name", "model_name", "scale"), [
    ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.25}),  # logits * logit_scale
    ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),  # logits / logits_scaling
])
def test_a_model_that_scales_its_logits_trains_like_the_unpatched_model(config_name, model_name, scale):
    import transformers

    config = getattr(transformers, config_name)(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **scale,
    )
    torch.manual_seed(0)
    reference = getattr(transformers, model_name)(config).train()
    patched = apply_xtf_kernels(twin(reference))
    inputs = batch()
    for _ in range(2):  # the first call checks the transform, the second runs without the check
        reference.zero_grad(set_to_none=True)
        patched.zero_grad(set_to_none=True)
        expected = reference(**inputs).loss
        expected.backward()
        with XtfOpCounter() as ops:
            out = patched(**inputs)
            out.loss.backward()
        assert out.logits is None and ops.calls["linear_cross_entropy"] == 1
        assert_close(out.loss, expected, msg="loss")
        for (name, p), q in zip(reference.named_parameters(), patched.parameters()):
            assert_close(q.grad, p.grad, grad=True, msg=name)


def test_a_logit_transform_the_config_does_not_describe_is_refused_on_the_first_training_call():
    import transformers

    config = transformers.CohereConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, logit_scale=0.25,
    )
    model = apply_xtf_kernels(transformers.CohereForCausalLM(config).train())
    model.logit_scale = 0.5  # the forward multiplies by the attribute; the config still says 0.25
    with pytest.raises(UnsupportedModelError, match="transforms its head's output"):
        model(**batch())


def test_models_without_a_causal_lm_loss_are_refused_at_apply_time():
    import transformers

    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    with pytest.raises(UnsupportedModelError, match="no labels|get_output_embeddings"):
        apply_xtf_kernels(transformers.LlamaModel(config))
    with pytest.raises(UnsupportedModelError, match="ForCausalLMLoss"):
        model = transformers.LlamaForCausalLM(config)
        model.loss_function = lambda *a, **k: 0.0
        apply_xtf_kernels(model)
    with pytest.raises(TypeError, match="model must be"):
        apply_xtf_kernels("llama")


def test_bad_options_and_columns_name_the_argument():
    with pytest.raises(ValueError, match="label_smoothing"):
        apply_xtf_kernels(tiny_model("llama"), label_smoothing=2.0)
    with pytest.raises(ValueError, match="loss_columns"):
        apply_xtf_kernels(tiny_model("llama"), loss_columns=("labels",))
    with pytest.raises(TypeError, match="loss_fn"):
        apply_xtf_kernels(tiny_model("llama"), loss_fn=3)
    patched = apply_xtf_kernels(tiny_model("llama"))
    inputs = batch()
    with pytest.raises(ValueError, match="token_weights has shape"):
        patched(**inputs, token_weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match="without labels"):
        patched(input_ids=inputs["input_ids"], token_weights=torch.ones(inputs["input_ids"].shape))
    with pytest.raises(ValueError, match="logits_to_keep"):
        patched(**inputs, logits_to_keep=1)


# --------------------------------------------------------------------------------------------------
# PEFT
# --------------------------------------------------------------------------------------------------


def _peft_pair(modules_to_save, apply_first: bool):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=modules_to_save)
    reference = peft.get_peft_model(tiny_model("llama"), config)
    if apply_first:
        patched = peft.get_peft_model(apply_xtf_kernels(tiny_model("llama")), config)
    else:
        patched = apply_xtf_kernels(peft.get_peft_model(tiny_model("llama"), config))
    # Same LoRA init in both (B starts at 0; give it values so the adapter changes the hidden states).
    patched.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for (name, p), (_, q) in zip(reference.named_parameters(), patched.named_parameters()):
            if "lora_B" in name:
                p.normal_(generator=torch.Generator().manual_seed(len(name)))
                q.copy_(p)
    return reference, patched


@pytest.mark.parametrize("apply_first", [True, False])
def test_lora_with_a_frozen_head_matches_and_computes_no_head_gradient(apply_first):
    reference, patched = _peft_pair(None, apply_first)
    inputs = batch()
    expected, actual = reference(**inputs), patched(**inputs)
    assert actual.logits is None
    assert_close(actual.loss, expected.loss)
    expected.loss.backward()
    actual.loss.backward()
    _assert_same_grads(patched, reference)
    assert patched.base_model.model.lm_head.weight.grad is None


@pytest.mark.parametrize("apply_first", [True, False])
def test_lm_head_in_modules_to_save_trains_the_active_copy(apply_first):
    reference, patched = _peft_pair(["lm_head"], apply_first)
    inputs = batch()
    expected, actual = reference(**inputs), patched(**inputs)
    assert actual.logits is None
    assert_close(actual.loss, expected.loss)
    expected.loss.backward()
    actual.loss.backward()
    _assert_same_grads(patched, reference)
    assert patched.base_model.model.lm_head.modules_to_save["default"].weight.grad is not None


def test_lora_on_the_head_itself_is_refused():
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"])
    with pytest.raises(UnsupportedModelError, match="PEFT adapter layer"):
        apply_xtf_kernels(peft.get_peft_model(tiny_model("llama"), config))
    patched = peft.get_peft_model(apply_xtf_kernels(tiny_model("llama")), config)
    with pytest.raises(UnsupportedModelError, match="PEFT adapter layer"):
        patched(**batch())


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------


def test_training_never_allocates_the_logits_and_peaks_lower():
    """V = 16384, 4 x 128 tokens: the (N, V) fp32 logits are 32 MiB; the fused path's chunks are 64 rows."""
    vocab, batch_size, length = 16384, 4, 128
    reference = tiny_model("llama", vocab_size=vocab)
    patched = apply_xtf_kernels(twin(reference), chunk_size=64)
    inputs = batch(batch_size, length, vocab=vocab)
    logits_bytes = batch_size * length * vocab * 4

    def step(model):
        def run():
            model(**inputs).loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    step(patched)()  # the first fused call also runs the one-time logits-transform check
    fused = profile_memory(step(patched))
    materialised = profile_memory(step(reference))
    assert materialised.largest >= logits_bytes  # the unpatched model does build them
    assert fused.largest < logits_bytes // 4, fused
    assert fused.peak < materialised.peak // 2, (fused, materialised)
