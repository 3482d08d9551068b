"""One TRL SFT job on a patched tiny Llama, run as a script: under ``torchrun`` (gloo, CPU) or as a single process.

    python tests/integrations/trl_sft_job.py OUT_DIR BATCH_PER_PROCESS

Each process writes ``OUT_DIR/rank<r>.pt``: the logged history, the xtf op calls of each step and the final
parameters, for tests/integrations/test_trl_distributed.py to compare.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch


def main(out_dir: str, batch_per_process: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    torch.set_num_threads(1)
    import trl

    from tests.integrations.test_trl_trainers import VOCAB
    from tests.integrations.test_trl_trainers import filtered_dataset
    from tests.integrations.tiny_models import tiny_model
    from tests.integrations.trl_runs import COMMON_ARGS
    from tests.integrations.trl_runs import tokenizer
    from tests.integrations.trl_runs import train
    from xtf_kernels.integrations.transformers import apply_xtf_kernels

    model = apply_xtf_kernels(tiny_model("llama", vocab_size=VOCAB))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1

    def build(callbacks):
        args = trl.SFTConfig(
            output_dir=tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=batch_per_process,
            gradient_accumulation_steps=1, max_length=32, ddp_backend="gloo" if distributed else None,
            **COMMON_ARGS,
        )
        return trl.SFTTrainer(model=model, args=args, train_dataset=filtered_dataset(), processing_class=tokenizer(),
                              callbacks=callbacks)

    run = train(build)
    rank = int(os.environ.get("RANK", "0"))
    result = dict(logs=run.logs, steps=[dict(c) for c in run.ops.steps], params=run.params)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # both ranks' results are on disk before either leaves
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    from tests.integrations.distributed import exit_without_static_destructors

    exit_without_static_destructors()
