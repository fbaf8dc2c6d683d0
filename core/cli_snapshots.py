"""CLI commands for cluster snapshots (registered by core.cli)."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `snapshot` command group to ``python -m core``."""
