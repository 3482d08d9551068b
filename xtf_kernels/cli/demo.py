"""``xtf demo``: the main job in miniature, on built-in noisy SFT data, with nothing downloaded.

A ~1M-parameter Llama-config base with a byte-level BPE tokenizer, pretrained on generated stories, web text,
fact Q&A and arithmetic in a chat template (built on first use and cached on disk), is fine-tuned on harder
two-step problems whose responses carry known noise (wrong numbers, off-domain sentences, garbled
artefacts; harmless boilerplate apart), once per method: every token, XTF (the paper preset and the
library's defaults), fixed Token Cleaning, RHO-1, the oracle that drops exactly the noise, and a random drop
matched to each filter's drop rate. Prints and writes into the output folder:

    report.json                      every number; fields documented in :mod:`xtf_kernels.demo.report`
    report.html                      one self-contained page: findings, intervals, samples token by token

``--quick`` takes under 3 minutes on 2 CPU cores from a fresh install (its smaller base included); the
default a few minutes once its base is cached. The same ``--seed`` gives the same report except its timing
fields. A CUDA GPU is used when there is one (``--device``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os

from ..demo.config import DEVICES
from ..demo.config import PRESETS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="the small preset: under 3 minutes on 2 CPU cores, its base included (default "
                             "preset: a few minutes once the base is cached)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the noise and the training order")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to train: auto (a CUDA GPU if there is one), cpu or cuda")
    parser.add_argument("--output-dir", default="xtf_demo_out",
                        help="folder for report.json and report.html (default ./xtf_demo_out)")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="noisy training problems (overrides the preset)")
    parser.add_argument("--noise-fraction", type=float, default=None,
                        help="share of the response tokens that are harmful noise, in [0, 0.5] (default 0.15)")
    parser.add_argument("--memory-vocab", type=int, default=None,
                        help="lm_head rows of the memory comparison (default 128256, Llama-3's vocabulary)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the pretrained base is cached (default $XDG_CACHE_HOME/xtf_kernels or "
                             "~/.cache/xtf_kernels)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the tiny model's matmuls are too small to split, and "
                             "on a busy 2-core machine 2 threads ran 10x slower; 0 keeps torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no stage lines on stderr")


def _config(args: argparse.Namespace):
    preset = PRESETS["quick" if args.quick else "default"]
    return preset.replace(seed=args.seed, train_samples=args.train_samples, noise_fraction=args.noise_fraction,
                          memory_vocab=args.memory_vocab)


# What the demo needs beyond torch: the model (transformers), the tokenizer (tokenizers), the cached base
# (safetensors), the plots (matplotlib) and the statistics (scipy).
NEEDS = ("transformers", "tokenizers", "safetensors", "matplotlib", "scipy")


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
    report = run_demo(config, output_dir, device=device, progress=not args.no_progress, cache_dir=args.cache_dir)
    print(format_summary(report))
    print(f"\nWrote {os.path.join(output_dir, report['files']['json'])} and "
          f"{os.path.join(output_dir, report['files']['html'])} ({report['timings']['total']:.0f} s).")
    return 0
