"""SFTTrainer, GRPOTrainer, RLOOTrainer, DPOTrainer and KTOTrainer with and without ``apply_xtf_kernels`` on the
same seed (tiny random Llama, CPU, two optimizer steps): xtf's custom ops run on every training step, and the
losses, TRL's logged metrics, first-step gradients and final parameters equal the plain TRL run's."""

from __future__ import annotations

import pytest
import torch

from tests.integrations.tiny_models import tiny_model
from tests.integrations.tiny_models import twin
from tests.integrations.trl_runs import COMMON_ARGS
from tests.integrations.trl_runs import assert_same_run
from tests.integrations.trl_runs import tokenizer
from tests.integrations.trl_runs import train

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from xtf_kernels.integrations.transformers import apply_xtf_kernels  # noqa: E402

VOCAB = 72  # the arithmetic tokenizer's


def _pair():
    reference = tiny_model("llama", vocab_size=VOCAB)
    return reference, apply_xtf_kernels(twin(reference))


def _assert_xtf_ran_every_step(run, steps: int) -> None:
    assert len(run.ops.steps) == steps
    for step, calls in enumerate(run.ops.steps):
        assert calls["token_logprobs"] > 0 and calls["head_backward"] > 0, f"step {step}: {dict(calls)}"


@pytest.mark.parametrize("trainer", ["GRPO", "RLOO"])
def test_online_rl_matches_plain_trl_and_runs_xtf_every_step(tmp_path, trainer):
    """GRPOTrainer and RLOOTrainer (the same generate-then-score loop, different advantages)."""
    config_class, trainer_class = getattr(trl, f"{trainer}Config"), getattr(trl, f"{trainer}Trainer")
    prompts = ["Tom has 3 apples .", "Anna buys 12 pens .", "How many books does Ben have ?", "Mia has 7 coins ."]
    dataset = datasets.Dataset.from_dict({"prompt": prompts})

    def reward(completions, **kwargs):
        # Longer completions score higher: enough spread for non-zero advantages.
        return [float(len(c)) for c in completions]

    def factory(model, folder):
        def build(callbacks):
            args = config_class(
                output_dir=str(tmp_path / folder), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=6, temperature=0.8, beta=0.0, **COMMON_ARGS,
            )
            return trainer_class(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                                 processing_class=tokenizer(), callbacks=callbacks)

        return build

    reference, patched = _pair()
    expected = train(factory(reference, "reference"))
    actual = train(factory(patched, "patched"))
    assert expected.ops.total == 0
    _assert_xtf_ran_every_step(actual, 2)
    assert_same_run(actual, expected, ("entropy", "num_tokens", "reward"))


def filtered_dataset(rows: int = 8, seed: int = 0, *, weights_only: bool = False):
    """A token filter's output, as the scoring pipeline writes it: input_ids; labels (-100 at prompt and dropped
    tokens); completion_mask (1 at kept response tokens, TRL's column); token_weights (float32, 0 at dropped);
    dropped_by (uint8 rule bits); score_kn (float32, NaN where unscored). ``weights_only`` leaves the dropped
    tokens' labels in place, so only token_weights drops them."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for i in range(rows):
        length = 7 + (i * 5) % 9
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        prompt = 2 + i % 3
        dropped = [j >= prompt and bool(torch.rand((), generator=generator) < 0.3) for j in range(length)]
        kept = [j >= prompt and not dropped[j] for j in range(length)]
        labels = [ids[j] if (kept[j] or (weights_only and j >= prompt)) else -100 for j in range(length)]
        records.append(dict(
            input_ids=ids, labels=labels, completion_mask=[int(k) for k in kept],
            token_weights=[float(k) for k in kept], dropped_by=[int(d) * (1 + j % 3) for j, d in enumerate(dropped)],
            score_kn=[float("nan") if j < prompt else float(torch.rand((), generator=generator))
                      for j in range(length)],
        ))
    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int64")), "labels": datasets.Sequence(datasets.Value("int64")),
        "completion_mask": datasets.Sequence(datasets.Value("int64")),
        "token_weights": datasets.Sequence(datasets.Value("float32")),
        "dropped_by": datasets.Sequence(datasets.Value("uint8")),
        "score_kn": datasets.Sequence(datasets.Value("float32")),
    })
    return datasets.Dataset.from_list(records, features=features)


def _sft(model, dataset, folder, *, collator=None, peft_config=None, **config):
    def build(callbacks):
        options = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_length=32)
        options.update(config)
        args = trl.SFTConfig(output_dir=str(folder), **options, **COMMON_ARGS)
        if peft_config is not None:
            torch.manual_seed(1)  # LoRA's A matrices are drawn when the trainer wraps the model
        return trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer(),
                              data_collator=collator, peft_config=peft_config, callbacks=callbacks)

    return build


@pytest.mark.parametrize("packing", [False, True])
def test_sft_on_filtered_data_matches_plain_trl_and_runs_xtf_every_step(tmp_path, packing):
    """Labels at -100 on prompt and dropped tokens; packing on (padding-free, position_ids) and off."""
    reference, patched = _pair()
    dataset = filtered_dataset()
    expected = train(_sft(reference, dataset, tmp_path / "reference", packing=packing))
    actual = train(_sft(patched, dataset, tmp_path / "patched", packing=packing))
    assert expected.ops.total == 0
    _assert_xtf_ran_every_step(actual, 2)
    assert_same_run(actual, expected, ("entropy", "mean_token_accuracy", "num_tokens"))


def test_sft_gradient_accumulation_equals_one_large_batch(tmp_path):
    dataset = filtered_dataset()
    one, two = (apply_xtf_kernels(tiny_model("llama", vocab_size=VOCAB)) for _ in range(2))
    large = train(_sft(one, dataset, tmp_path / "large", max_steps=1, per_device_train_batch_size=4,
                       gradient_accumulation_steps=1))
    accumulated = train(_sft(two, dataset, tmp_path / "accumulated", max_steps=1, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2))
    assert len(accumulated.ops.steps) == 1 and accumulated.ops.steps[0]["token_logprobs"] == 2
    assert_same_run(accumulated, large, ("entropy", "mean_token_accuracy", "num_tokens"))


def test_sft_token_weights_column_trains_on_the_weighted_kept_tokens(tmp_path):
    """Dropped tokens keep their labels and get weight 0; kept tokens get soft weights. The first step's gradient
    is that of sum_i w_i nll_i / num_items_in_batch (Trainer's count of labelled tokens), computed here from the
    unpatched model's logits on the very batches the trainer collated."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from xtf_kernels.integrations.trainer import TokenColumnsCollator

    reference, patched = _pair()
    dataset = filtered_dataset(weights_only=True)
    generator = torch.Generator().manual_seed(9)
    dataset = dataset.map(lambda row: {"token_weights": [w * (0.5 + float(torch.rand((), generator=generator)))
                                                         for w in row["token_weights"]]})
    seen = []
    inner = TokenColumnsCollator(DataCollatorForLanguageModeling(pad_token_id=0), {"token_weights": 0.0})

    def collator(features):
        out = inner(features)
        seen.append({k: v.clone() for k, v in out.items()})
        return out

    run = train(_sft(patched, dataset, tmp_path / "weighted", collator=collator, max_steps=1,
                     remove_unused_columns=False, max_grad_norm=0.0))  # unclipped gradients
    _assert_xtf_ran_every_step(run, 1)
    micro_batches = seen[:2]  # the trainer collates one batch ahead
    num_items = sum((b["labels"][:, 1:] != -100).sum() for b in micro_batches)
    for b in micro_batches:
        logits = reference(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b["labels"][:, 1:], reduction="none")
        (b["token_weights"][:, 1:] * nll).sum().div(num_items).backward()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(run.grads[name], p.grad, atol=2e-5 * p.grad.abs().max().item(), rtol=2e-4,
                                   msg=lambda m, n=name: f"gradient {n}\n{m}")


def _with_reference_model(tmp_path, config_class, trainer_class, dataset, *, batch_size: int):
    """Plain TRL and a patched model (its reference model patched too) through an offline trainer that keeps a
    reference model, two steps each: (expected, actual) runs, once xtf ops ran every step of the patched run
    and none in the plain one."""

    def factory(model, ref_model, folder):
        def build(callbacks):
            args = config_class(output_dir=str(tmp_path / folder), max_steps=2, per_device_train_batch_size=batch_size,
                                gradient_accumulation_steps=1, max_length=24, **COMMON_ARGS)
            return trainer_class(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                                 processing_class=tokenizer(), callbacks=callbacks)

        return build

    reference, patched = _pair()
    expected = train(factory(reference, twin(reference), "reference"))
    actual = train(factory(patched, twin(patched), "patched"))
    assert expected.ops.total == 0
    _assert_xtf_ran_every_step(actual, 2)
    return expected, actual


def test_dpo_matches_plain_trl_and_runs_xtf_every_step(tmp_path):
    dataset = datasets.Dataset.from_dict({
        "prompt": ["Tom has 3 apples .", "Anna buys 12 pens .", "How many books does Ben have ?", "Mia has 7 ."],
        "chosen": ["Tom has 3 apples now .", "12", "Ben has 4 books .", "Mia has 7 coins ."],
        "rejected": ["Anna has", "pens pens 5", "How ?", "7 7 7 7 7"],
    })

    expected, actual = _with_reference_model(tmp_path, trl.DPOConfig, trl.DPOTrainer, dataset, batch_size=2)
    for calls in actual.ops.steps:  # policy (chosen + rejected in one call) and reference model
        assert calls["token_logprobs"] >= 2
    assert_same_run(actual, expected, ("entropy", "mean_token_accuracy", "num_tokens", "rewards/chosen",
                                       "rewards/margins", "logps/chosen", "logits/chosen"))


def test_sft_step_of_a_patched_model_allocates_no_tokens_by_vocab_tensor(tmp_path):
    """Every allocation of one SFT training step (forward + backward), from the profiler: plain TRL on the CPU
    projects every position into a (positions, V) fp32 tile; the patched step's largest tensor is far below
    (kept tokens) x V (chunks of 8 rows here; the head's (V, H) gradient is the largest remaining tensor)."""
    from tests.integrations.memory_profile import profile_memory

    vocab = 2048
    reference = tiny_model("llama", vocab_size=vocab, hidden_size=16)
    patched = apply_xtf_kernels(twin(reference), chunk_size=8)
    dataset = filtered_dataset()
    largest = {}
    for name, model in (("reference", reference), ("patched", patched)):
        trainer = _sft(model, dataset, tmp_path / name, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                       max_steps=1)([])
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test skips
        inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        kept = int((inputs["labels"][:, 1:] != -100).sum())
        largest[name] = profile_memory(lambda t=trainer, m=model, x=inputs: t.training_step(m, x)).largest
    bound = kept * vocab * 4
    assert largest["reference"] >= bound, largest
    assert largest["patched"] < bound / 2, (largest, bound)


def test_sft_with_compute_loss_func_warns_that_logits_were_built(tmp_path):
    """SFTTrainer's compute_loss_func path calls the model without labels: a bypass, reported once by name."""
    from xtf_kernels.integrations import bypass

    bypass.reset_warnings()
    model = apply_xtf_kernels(tiny_model("llama", vocab_size=VOCAB))

    def loss_func(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits[:, :-1].float()
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="sum") / (
            num_items_in_batch or 1)

    def build(callbacks):
        args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, max_length=32,
                             **COMMON_ARGS)
        return trl.SFTTrainer(model=model, args=args, train_dataset=filtered_dataset(), processing_class=tokenizer(),
                              compute_loss_func=loss_func, callbacks=callbacks)

    with pytest.warns(bypass.XtfBypassWarning, match=r"full logits for training \(called from sft_trainer\.py:\d+ in "
                                                     r"compute_loss\)"):
        run = train(build)
    # The metrics still come from xtf (the no-grad fused call), the loss did not.
    assert run.ops.steps[0]["token_logprobs"] > 0 and run.ops.steps[0]["head_backward"] == 0


def test_grpo_with_a_kl_term_patches_the_reference_model_trl_builds(tmp_path):
    """beta > 0: GRPOTrainer loads its reference model itself (from the policy's path). Patching both after the
    trainer is built (TRL's fused heads already installed) puts the reference log-probs on xtf too."""
    path = tmp_path / "tiny"
    tiny_model("llama", vocab_size=VOCAB).save_pretrained(path)
    tokenizer().save_pretrained(path)
    dataset = datasets.Dataset.from_dict({"prompt": ["Tom has 3 apples .", "Anna buys 12 pens ."] * 2})

    def reward(completions, **kwargs):
        return [float(len(c)) for c in completions]

    runs = {}
    for name in ("reference", "patched"):

        def build(callbacks, name=name):
            args = trl.GRPOConfig(
                output_dir=str(tmp_path / name), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=5, beta=0.1, **COMMON_ARGS,
            )
            trainer = trl.GRPOTrainer(model=str(path), reward_funcs=reward, args=args, train_dataset=dataset,
                                      callbacks=callbacks)
            if name == "patched":
                apply_xtf_kernels(trainer.model)
                apply_xtf_kernels(trainer.ref_model)
            return trainer

        runs[name] = train(build)
    expected, actual = runs["reference"], runs["patched"]
    assert expected.ops.total == 0
    # Policy forward + backward, and the reference model's forward-only log-probs.
    assert actual.ops.steps[0]["token_logprobs"] >= 2 and actual.ops.steps[0]["head_backward"] >= 1
    assert_same_run(actual, expected, ("entropy", "kl", "reward"))


def test_sft_with_a_lora_peft_config_matches_plain_trl(tmp_path):
    """SFTTrainer wraps the patched model in PEFT itself (peft_config) and adds its fused head to the base model."""
    peft = pytest.importorskip("peft")

    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    reference, patched = _pair()
    expected = train(_sft(reference, filtered_dataset(), tmp_path / "reference", peft_config=lora))
    actual = train(_sft(patched, filtered_dataset(), tmp_path / "patched", peft_config=lora))
    assert expected.ops.total == 0
    _assert_xtf_ran_every_step(actual, 2)
    assert any("lora" in name for name in actual.grads) and not any("lm_head" in name for name in actual.grads)
    assert_same_run(actual, expected, ("entropy", "mean_token_accuracy", "num_tokens"))


def test_kto_matches_plain_trl_and_runs_xtf_every_step(tmp_path):
    dataset = datasets.Dataset.from_dict({
        "prompt": ["Tom has 3 apples .", "Anna buys 12 pens .", "How many books does Ben have ?", "Mia has 7 ."],
        "completion": ["Tom has 3 apples now .", "pens pens 5", "Ben has 4 books .", "7 7 7 7 7"],
        "label": [True, False, True, False],
    })

    expected, actual = _with_reference_model(tmp_path, trl.KTOConfig, trl.KTOTrainer, dataset, batch_size=4)
    for calls in actual.ops.steps:  # policy and reference model, on the batch and on KTO's mismatched KL pairs
        assert calls["token_logprobs"] >= 4
    assert_same_run(actual, expected, ("entropy", "kl", "num_tokens", "rewards/chosen", "rewards/margins",
                                       "logps/chosen", "logps/rejected", "logits/chosen"))
