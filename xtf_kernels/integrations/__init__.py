"""Drop-in integrations of the fused ops with training stacks.

- :mod:`.transformers`: ``apply_xtf_kernels(model)`` makes a transformers causal LM (bare or PEFT-wrapped)
  train on :func:`xtf_kernels.linear_cross_entropy` without building logits; works under ``Trainer``,
  DDP, FSDP2 and DeepSpeed ZeRO-3 (see that module's docstring for each engine).
- :mod:`.output_head`: ``head_loss(head, hidden, targets, ...)`` runs a fused loss inside the output
  embedding's own forward, so sharding engines gather its weight; for custom training loops.
- :mod:`.trainer`: a data collator for per-token batch columns (``token_weights``, ``ref_losses``) and the
  documented Trainer / TRL / SFT-loop recipes, RHO-1 included.
- :mod:`.trl`: TRL's fused lm_head (SFT, GRPO, DPO, RLOO, KTO) served by ``token_logprobs`` on a patched model.
- :mod:`.liger`: ``LigerFusedLinearCrossEntropyLoss`` / ``liger_fused_linear_cross_entropy`` with Liger-Kernel's
  signature and options, computed by ``linear_cross_entropy`` (swap the import).
- :mod:`.dropped_token_monitor`: a Trainer callback reporting the NLL of the tokens a filter dropped.
- :mod:`.bypass`: the once-per-path :class:`~.bypass.XtfBypassWarning` raised when a patched model is run
  around xtf_kernels.
- :mod:`.vocab_parallel`: linear cross-entropy and token log-probs over a ``torch.distributed`` group
  where each rank holds a slice of the vocabulary rows of the output embedding.

Each submodule imports only what it needs; importing this package imports nothing optional.
"""
