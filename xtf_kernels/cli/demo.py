"""``xtf demo``: the main job in miniature, on a built-in noisy SFT set, with nothing downloaded.

Builds a small tokenised arithmetic SFT set with a known fraction of corrupted response tokens, a tiny
causal LM from a transformers config, and fine-tunes it three ways with the fused loss: on all tokens,
XTF-filtered and Token-Cleaning-filtered. Prints the report (tokens kept per method and per XTF rule,
precision / recall of the dropped tokens against the known noise, held-out exact match, losses, peak
memory of the fused loss against materialised logits, tokens per second) and writes into the output
folder:

    report.json                      every number; fields documented in :mod:`xtf_kernels.demo.report`
    report.html                      one self-contained page with the plots and highlighted samples
    scores/<method>/                 the scoring results (reusable with ``xtf filter``) and that method's
                                     own explainability page

``--quick`` takes about a minute on 2 CPU cores, the default a few minutes; a CUDA GPU is used when
there is one (``--device``). The same ``--seed`` gives the same report except its timing fields.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

from ..demo.config import DEVICES
from ..demo.config import PRESETS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="the small preset: about a minute on 2 CPU cores (default preset: a few minutes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the training order")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to train: auto (a CUDA GPU if there is one), cpu or cuda")
    parser.add_argument("--output-dir", default="xtf_demo_out",
                        help="folder for report.json, report.html and the scores (default ./xtf_demo_out)")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps per method (overrides the preset; pretraining and warm-up "
                             "scale with it)")
    parser.add_argument("--train-samples", type=int, default=None, help="noisy training samples (overrides the preset)")
    parser.add_argument("--noise-fraction", type=float, default=None,
                        help="expected fraction of corrupted response tokens, in [0, 0.9] (default 0.2)")
    parser.add_argument("--memory-vocab", type=int, default=None,
                        help="lm_head rows of the memory comparison (default 128256, Llama-3's vocabulary)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for training and scoring (default 1: the tiny model's matmuls are "
                             "too small to split, and on a busy 2-core machine 2 threads ran 10x slower; 0 keeps "
                             "torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines on stderr")


def _config(args: argparse.Namespace):
    preset = PRESETS["quick" if args.quick else "default"]
    changes = {"seed": args.seed, "train_samples": args.train_samples, "noise_fraction": args.noise_fraction,
               "memory_vocab": args.memory_vocab}
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be a positive integer, got {args.steps}")
        # Keep the preset's proportions: pretraining and warm-up shrink or grow with the fine-tuning steps.
        scale = args.steps / preset.finetune_steps
        changes.update(finetune_steps=args.steps, pretrain_steps=max(1, round(preset.pretrain_steps * scale)),
                       warmup_steps=max(1, round(preset.warmup_steps * scale)),
                       eval_every=max(1, min(preset.eval_every, args.steps)))
    return preset.replace(**changes)


# What the demo needs beyond torch: the model (transformers), the scoring results (safetensors), the plots.
NEEDS = ("transformers", "safetensors", "matplotlib")


def run(args: argparse.Namespace) -> int:
    from ..demo.run import resolve_device
    from ..demo.run import run_demo
    from ..demo.summary import format_summary

    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"xtf demo needs {', '.join(missing)}: pip install 'xtf_kernels[hf]'")
    config = _config(args)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    output_dir = args.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"--output-dir {output_dir} exists and is not a folder")
    report = run_demo(config, output_dir, device=device, progress=not args.no_progress)
    print(format_summary(report))
    print(f"\nWrote {os.path.join(output_dir, report['files']['json'])} and "
          f"{os.path.join(output_dir, report['files']['html'])} ({report['timings']['total']:.0f} s).")
    return 0
