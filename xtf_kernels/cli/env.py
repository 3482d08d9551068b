"""``xtf env``: the environment report of :mod:`xtf_kernels.env` (same output as ``python -m xtf_kernels.env``)."""

from __future__ import annotations

import argparse

from .. import env


def register(parser: argparse.ArgumentParser) -> None:
    env.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return env.run(args)
