"""``xtf score DATA --model PATH --out DIR``: score a dataset's response tokens and write the results.

DATA is a JSONL file: one ``{"prompt": ..., "response": ...}`` object per line (tokenised with the model's
tokenizer as ``[bos] prompt response [eos]``, the response and eos trained on), or already tokenised
``{"input_ids": [...], "labels": [...]}`` (or ``prompt_length`` / ``loss_mask`` instead of labels); or a
Hugging Face dataset with those columns: a ``save_to_disk`` folder or a ``.parquet`` file.
Methods: ``xtf`` (reasoning importance, knowledge novelty and task relevance of the base model's tokens;
arXiv 2602.14536) and ``token-cleaning`` (influence of a reference model over the base, top k kept; arXiv
2502.01968; needs ``--ref``). The results folder is resumable: run
the same command again after an interruption. Then ``xtf filter`` writes the masked dataset.

Examples::

    xtf score train.jsonl --model ./my-model --out scores/
    xtf score train.jsonl --model ./base --method token-cleaning --ref ./warmed-up --k 0.6 --out tc/
    xtf filter train.jsonl --scores scores/ --out train.filtered.jsonl

Many GPUs and nodes: launch the same command with torchrun, accelerate launch or srun; each rank scores its
share of the shards on its own GPU (cuda:LOCAL_RANK) and the results are those of one process::

    torchrun --nproc-per-node 8 -m xtf_kernels score train.jsonl --model ./my-model --out scores/
"""

from __future__ import annotations

import argparse
import os

from . import CliError

METHODS = ("xtf", "token-cleaning")


def _layers(text: str):
    if text in ("mean", "last"):
        return text
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected mean, last or comma-separated layer indices, got {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.replace("``", "")
    parser.add_argument("data", metavar="DATA", help="JSONL file (prompt/response text or tokenised records), or a "
                        "datasets save_to_disk folder / .parquet file")
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="local transformers causal LM folder: the base model (the one to fine-tune)")
    parser.add_argument("--out", required=True, metavar="DIR", help="results folder (created; resumable)")
    parser.add_argument("--method", choices=METHODS, default="xtf", help="scoring method (default xtf)")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder (default: the --model folder)")
    parser.add_argument("--max-length", type=int, help="truncate samples to this many tokens")

    xtf = parser.add_argument_group("XTF (--method xtf)")
    xtf.add_argument("--rules", type=_names, default=("RI", "KN", "TR"),
                     help="rules applied, their union drops a token (default RI,KN,TR)")
    xtf.add_argument("--attn-layers", type=_layers, default="mean",
                     help="RI layers: mean (all), last, or indices like 0,-1 (default mean)")
    xtf.add_argument("--ri-fence-c", type=float, default=1.0, help="RI fence q1 - c (q3 - q1) (default 1.0)")
    xtf.add_argument("--kn-pcp-max", type=float, default=0.95, help="KN drops tokens with p(token) above this "
                     "(default 0.95)")
    xtf.add_argument("--tr-distance", choices=("cosine", "euclidean"), default="cosine",
                     help="TR distance to the domain vector (default cosine)")
    xtf.add_argument("--tr-normalization", choices=("minmax", "max", "rank"), default="minmax",
                     help="TR normalisation of the distances (default minmax)")
    xtf.add_argument("--otsu-classes", type=int, default=3, help="Multi-Otsu classes of S_TR (default 3)")
    xtf.add_argument("--otsu-bins", type=int, default=256, help="Multi-Otsu histogram bins (default 256)")
    xtf.add_argument("--tr-noisy-classes", type=_ints, default=(1,),
                     help="Otsu classes TR drops, 0 = lowest S_TR (default 1: the second-lowest)")

    tc = parser.add_argument_group("Token Cleaning (--method token-cleaning)")
    tc.add_argument("--ref", metavar="PATH", help="reference model folder (the base fine-tuned on trusted data)")
    tc.add_argument("--k", type=float, default=0.6, help="fraction of response tokens kept (default 0.6)")
    tc.add_argument("--scope", choices=("global", "sample"), default="global",
                    help="top k over the whole dataset or per sample (default global)")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", default="auto", help="auto (CUDA if available; cuda:LOCAL_RANK under a "
                           "distributed launcher), cpu or cuda[:N]")
    run_group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                           help="model dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
    run_group.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")
    run_group.add_argument("--max-batch-tokens", type=int, help="cap on padded tokens per forward pass")
    run_group.add_argument("--shard-size", type=int, default=1024,
                           help="samples per results shard, the unit of resumption (default 1024)")
    run_group.add_argument("--overwrite", action="store_true",
                           help="discard results in --out computed for other data or settings")
    run_group.add_argument("--no-report", action="store_true",
                           help="skip report.html / report.json / histograms.png in --out")
    run_group.add_argument("--report-samples", type=int, default=50, help="samples shown in report.html (default 50)")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bars")
    run_group.add_argument("--num-workers", type=int, help="DataLoader workers per rank that read, tokenise and "
                           "batch (default: the rank's share of the CPU cores less one, at most 4)")
    run_group.add_argument("--break-lock", action="store_true",
                           help="take --out's run lock even if another run seems to hold it (only when that run "
                           "is known to be gone, e.g. its node died)")


def _scorer(args, model, device: str):
    if args.method == "xtf":
        from ..methods import XTFConfig
        from ..methods import XTFScorer

        config = XTFConfig(rules=args.rules, attn_layers=args.attn_layers, ri_fence_c=args.ri_fence_c,
                           kn_pcp_max=args.kn_pcp_max, tr_distance=args.tr_distance,
                           tr_normalization=args.tr_normalization, otsu_classes=args.otsu_classes,
                           otsu_bins=args.otsu_bins, tr_noisy_classes=args.tr_noisy_classes)
        return XTFScorer(model, config)
    from ..methods import TokenCleaningConfig
    from ..methods import TokenCleaningScorer
    from ..pipeline.loading import load_causal_lm

    ref = load_causal_lm(args.ref, device=device, dtype=args.dtype)
    return TokenCleaningScorer(model, ref, TokenCleaningConfig(k=args.k, scope=args.scope))


def run(args: argparse.Namespace) -> int:
    from ..pipeline import rule_statistics
    from ..pipeline import score_dataset
    from ..pipeline import write_report
    from ..pipeline.distributed import join
    from ..pipeline.distributed import resolve_rank_device
    from ..pipeline.loading import load_causal_lm
    from ..pipeline.loading import load_tokenizer

    if not os.path.exists(args.data):
        raise FileNotFoundError(f"dataset file not found: {args.data}")
    if args.method == "token-cleaning" and not args.ref:
        raise CliError("--method token-cleaning needs --ref PATH (the reference model)")
    if args.method != "token-cleaning" and args.ref:
        raise CliError("--ref is only used with --method token-cleaning")
    if args.no_progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise NotADirectoryError(f"--out {args.out} exists and is not a folder")
    if args.num_workers is not None and args.num_workers < 0:
        raise CliError(f"--num-workers must be >= 0, got {args.num_workers}")
    group = join(args.device)  # under torchrun / accelerate launch / srun: this rank's process group
    try:
        device = str(resolve_rank_device(args.device, group.local_rank))
        tokenizer_path = args.tokenizer or args.model
        model = load_causal_lm(args.model, device=device, dtype=args.dtype)
        tokenizer = load_tokenizer(tokenizer_path)
        scorer = _scorer(args, model, device)
        source_info = {"data": os.path.abspath(args.data), "model": os.path.abspath(args.model),
                       "tokenizer": os.path.abspath(tokenizer_path), "max_length": args.max_length,
                       "ref": os.path.abspath(args.ref) if args.ref else None}
        result = score_dataset(scorer, args.data, args.out, tokenizer=tokenizer, max_length=args.max_length,
                               batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                               shard_size=args.shard_size, overwrite=args.overwrite, progress=not args.no_progress,
                               source_info=source_info, num_workers=args.num_workers, break_lock=args.break_lock)
    finally:
        group.close()
    if not group.is_main:
        return 0  # rank 0 writes the report and prints the summary
    if args.no_report:
        statistics = rule_statistics(result)
    else:
        statistics = write_report(result, data=args.data, tokenizer=tokenizer, max_length=args.max_length,
                                  max_samples=args.report_samples)["statistics"]
    print(f"{result.method}: {statistics['num_samples']} samples, {statistics['scored_tokens']} response tokens "
          f"scored, {statistics['dropped_tokens']} dropped ({statistics['dropped_fraction']:.1%})")
    for rule, counts in statistics["rules"].items():
        print(f"  {rule:>14}: {counts['fired']} tokens ({counts['fraction']:.1%}), {counts['only_this_rule']} by this "
              "rule alone")
    throughput = result.manifest["throughput"]
    if throughput is not None and throughput["tokens"]:
        ranks = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in throughput["ranks"])
        print(f"scored {throughput['tokens']:,} tokens at {throughput['tokens_per_s']:,.0f} tokens/s on "
              f"{throughput['world_size']} rank(s) (per rank: {ranks})")
    print(f"results in {args.out}" + ("" if args.no_report else f" (report: {os.path.join(args.out, 'report.html')})"))
    print("next: xtf filter " + " ".join([args.data, "--scores", args.out, "--out", "FILTERED.jsonl"]))
    return 0
