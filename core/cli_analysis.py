"""CLI commands for the analyses built on stored embeddings (registered by core.cli)."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add analysis sub-commands to ``python -m core``."""
