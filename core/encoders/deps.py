"""Heavy optional packages, imported on first use, and the Hugging Face hub's reachability.

Importing ``core.encoders`` stays cheap: torch, timm, open_clip and onnxruntime load only when
an encoder that needs them is built.
"""

from __future__ import annotations

import functools
import importlib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core.encoders.spec import EncoderSpec
from core.errors import EncoderUnavailableError

HF_HUB_HOST = "huggingface.co"


def import_torch() -> Any:
    import torch

    return torch


def import_package(module: str, spec: EncoderSpec | None) -> Any:
    """Import ``module``, or say which encoder needed it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        who = f" (needed by {spec.id})" if spec else ""
        raise EncoderUnavailableError(f"Python package {module!r} is missing{who}; run `make venv`.") from exc


@contextmanager
def hf_hub_offline_unless_reachable(weights: Any) -> Iterator[None]:
    """Without network, huggingface_hub retries for about a minute before failing. When the hub
    is unreachable (checked once, 3 s), switch it to offline mode for this call: cached weights
    still load, missing ones fail at once with our message."""
    if weights or not _reachability_check()():
        yield
        return
    import huggingface_hub.constants as hf_constants

    previous = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = previous


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> bool:
    try:
        socket.create_connection((HF_HUB_HOST, 443), timeout=3).close()
        return False
    except OSError:
        return True


def _reachability_check() -> Callable[[], bool]:
    # Called through the package: ``core.encoders._hub_unreachable`` is the name callers (and
    # tests simulating an air-gapped machine) replace, as they did when encoders was one module.
    from core import encoders

    return encoders._hub_unreachable
