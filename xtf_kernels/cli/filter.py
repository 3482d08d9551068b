"""``xtf filter DATA --scores DIR --out FILE``: write DATA with label -100 on every token the scores dropped.

The masks apply only to the exact tokenised data that was scored: the same file, tokenizer and max length
(checked by fingerprint; a mismatch is refused with an error). The tokenizer and max length default to the
ones ``xtf score`` recorded in DIR. FILE is JSONL (``{"input_ids", "labels"}`` per line; default),
``.safetensors`` (``input_ids`` / ``labels`` concatenated and ``offsets``), or a Hugging Face dataset that
trainers read as it is (``--format dataset``: a ``save_to_disk`` folder; ``.parquet``): columns
``input_ids``, ``labels`` (-100 at prompt and dropped tokens), ``completion_mask`` (TRL), ``token_weights``,
``dropped_by`` (rule bits) and ``score_<name>``, the rule names in the dataset's description.

Example::

    xtf score train.jsonl --model ./my-model --out scores/
    xtf filter train.jsonl --scores scores/ --out train.filtered.jsonl
    xtf filter train.jsonl --scores scores/ --out train.filtered --format dataset   # datasets.load_from_disk
"""

from __future__ import annotations

import argparse
import os


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.replace("``", "")
    parser.add_argument("data", metavar="DATA", help="the dataset that was scored (JSONL file, datasets folder or "
                        ".parquet file)")
    parser.add_argument("--scores", required=True, metavar="DIR", help="results folder written by `xtf score`")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output file (.jsonl, .safetensors, .parquet) or folder (--format dataset)")
    parser.add_argument("--format", choices=("jsonl", "safetensors", "dataset", "parquet"),
                        help="output format (default: from the --out extension, else jsonl)")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="tokenizer folder (default: the one `xtf score` used, recorded in DIR)")
    parser.add_argument("--max-length", type=int,
                        help="truncation used when scoring (default: the one recorded in DIR)")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import ScoreResult
    from ..pipeline import rule_statistics
    from ..pipeline.loading import load_tokenizer
    from ..pipeline.loading import needs_tokenizer

    if not os.path.exists(args.data):
        raise FileNotFoundError(f"dataset file not found: {args.data}")
    result = ScoreResult(args.scores)
    source = result.manifest["source"]
    tokenizer = None
    if needs_tokenizer(args.data):
        path = args.tokenizer or source.get("tokenizer")
        if not path:
            raise ValueError("DATA holds text; give --tokenizer PATH (the scores folder records none)")
        tokenizer = load_tokenizer(path)
    max_length = args.max_length if args.max_length is not None else source.get("max_length")
    count = result.write_filtered(args.data, args.out, tokenizer=tokenizer, max_length=max_length,
                                  format=args.format)
    statistics = rule_statistics(result)
    print(f"wrote {count} samples to {args.out}: {statistics['dropped_tokens']} of {statistics['scored_tokens']} "
          f"response tokens dropped ({statistics['dropped_fraction']:.1%}, label -100)")
    return 0
