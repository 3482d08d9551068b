"""The ``xtf`` command line (also ``python -m xtf_kernels``).

Each subcommand lives in its own module exposing

    register(parser: argparse.ArgumentParser) -> None   # adds its arguments (with help texts)
    run(args: argparse.Namespace) -> int                # the exit status

and is listed once in ``SUBCOMMANDS``. Errors a user can fix (missing file, bad option, wrong model) are
raised as :class:`CliError` or as ValueError / FileNotFoundError / XtfError and printed as one line with
a non-zero exit status, never a traceback (``XTF_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("xtf_kernels.cli.demo", "fine-tune a tiny model on a built-in noisy SFT set three ways and report"),
    "bench": ("xtf_kernels.cli.bench", "memory and throughput of the fused ops on this device"),
    "env": ("xtf_kernels.cli.env", "versions, device, available backends and the build of the extension"),
    "score": ("xtf_kernels.cli.score", "score a dataset's response tokens (XTF, Token Cleaning, RHO-1)"),
    "filter": ("xtf_kernels.cli.filter", "apply scored masks to a dataset (labels -100 on dropped tokens)"),
    "calibrate": ("xtf_kernels.cli.calibrate", "sweep a filter's threshold on a trusted dev set (drop rate vs NLL)"),
    "fidelity": ("xtf_kernels.cli.fidelity", "estimate TV distance between real and synthetic sample sets"),
}


class CliError(Exception):
    """A user-fixable problem; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (no usage block) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xtf", description="Fused token-level loss kernels and token filtering for LLM fine-tuning."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # subcommand not part of this build
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.register(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("xtf: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError) as exc:
        if os.environ.get("XTF_DEBUG") == "1":
            raise
        print(f"xtf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last resort: still one line, never a traceback
        from ..errors import XtfError

        if os.environ.get("XTF_DEBUG") == "1":
            raise
        kind = "error" if isinstance(exc, XtfError) else f"unexpected {type(exc).__name__}"
        print(f"xtf {args.command}: {kind}: {exc} (XTF_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
