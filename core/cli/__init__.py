"""`python -m core …` (and the `replens` console script): everything RepLens does, headless
(GPU servers, scripts, CI).

Each command with ``--json`` prints exactly one JSON object (or list) on stdout; progress
bars and messages go to stderr. User errors print one line ``error: …`` and exit 2.

Layout: ``common`` holds what every command shares (options, store, output, errors); ``data``,
``analysis`` and ``snapshots`` each add one group of commands and import only ``common``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from core.cli import analysis, data, jobs, snapshots
from core.cli.common import run

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (argparse usage errors exit 2 themselves)."""
    args = build_parser().parse_args(argv)
    return run(args.func, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="RepLens engine (headless).")
    sub = parser.add_subparsers(dest="command", required=True)
    data.add_commands(sub)
    analysis.add_commands(sub)
    snapshots.add_commands(sub)
    jobs.add_commands(sub)
    return parser
