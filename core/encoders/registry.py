"""The encoder registry and the one way in: ``load_encoder(id, device)``.

Built-ins and third-party packages register the same way, with ``@register_encoder``; packages
that declare an entry point in group ``replens.encoders`` are imported the first time the
registry is read (see core/registry.py), so their encoders are listed and loaded like ours.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.encoders.base import BaseEncoder, Loader
from core.encoders.deps import import_torch
from core.encoders.files import (
    FILE_PREFIXES,
    ONNX_FILE_PREFIX,
    TIMM_FILE_PREFIX,
    file_version,
    load_onnx_file,
    load_timm_file,
)
from core.encoders.precision import DEFAULT_PRECISION, check_offered, check_precision_name, resolve_precision
from core.encoders.spec import EncoderRegistrationWarning, EncoderSpec, check_option
from core.errors import EncoderUnavailableError, InvalidInputError, UnknownEncoderError
from core.registry import Registry


@dataclass(frozen=True)
class _Entry:
    spec: EncoderSpec
    loader: Loader


class _EncoderRegistry(Registry[_Entry]):
    def pop(self, name: str, default: _Entry | None = None) -> _Entry | None:
        """Dict-style removal, as callers used it when the registry was a plain dict."""
        removed = self.remove(name)
        return default if removed is None else removed


_REGISTRY = _EncoderRegistry("encoder", warning=EncoderRegistrationWarning)


def register_encoder(spec: EncoderSpec) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(spec, device, layer, pooling, weights)`` under ``spec.id``.

    Built-ins use this exactly as a third-party package would.
    """

    def decorate(loader: Loader) -> Loader:
        _REGISTRY.add(spec.id, _Entry(spec, loader))
        return loader

    return decorate


def unregister_encoder(encoder_id: str) -> EncoderSpec | None:
    """Forget ``encoder_id`` (a test's or a notebook's temporary encoder); returns its spec, if it was registered."""
    entry = _REGISTRY.remove(encoder_id)
    return entry.spec if entry is not None else None


def list_encoders() -> list[EncoderSpec]:
    """Specs of every registered encoder (built-ins, then plug-ins), in registration order."""
    return [entry.spec for entry in _REGISTRY.values()]


def offline_encoder_ids() -> list[str]:
    return [s.id for s in list_encoders() if not s.needs_network]


def get_spec(encoder_id: str) -> EncoderSpec:
    """The spec for ``encoder_id`` (registered, or a ``timm-file:``/``onnx-file:`` id)."""
    entry = _REGISTRY.get(encoder_id)
    if entry is not None:
        return entry.spec
    if encoder_id.startswith(FILE_PREFIXES):
        raise InvalidInputError(
            f"{encoder_id!r} is a local-file encoder: its spec is only known once loaded (use load_encoder)."
        )
    raise UnknownEncoderError(_unknown_message(encoder_id))


def resolve_device(device: str | None = "auto") -> str:
    """'auto' → cuda if available, else mps, else cpu."""
    if device not in (None, "auto"):
        if device.startswith("cuda") and not import_torch().cuda.is_available():
            raise InvalidInputError(f"device {device!r} asked for, but this machine has no CUDA GPU; use --device cpu")
        return device
    torch = import_torch()
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_encoder(
    encoder_id: str,
    device: str | None = "auto",
    *,
    layer: str | None = None,
    pooling: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    precision: str = DEFAULT_PRECISION,
) -> BaseEncoder:
    """Build the encoder ``encoder_id`` on ``device``.

    Args:
        encoder_id: a registered id (``python -m core encoders``), or
            ``timm-file:ARCH:PATH`` (any timm architecture + local safetensors/.pth weights), or
            ``onnx-file:PATH#OUTPUT_NAME`` (any ONNX model, taking the named output).
        device: "auto", "cpu", "cuda", "cuda:1", "mps".
        layer: "last" or "blockN" for ViTs (see ``spec.layers``); part of the cache key.
        pooling: "cls" / "mean" for ViTs, "avg" / "gem" for CNNs; part of the cache key.
        weights: a local weights file sent through the encoder's hub loading path instead of
            downloading (for air-gapped machines and tests).
        precision: "fp32" (default), "bf16" (see ``spec.precisions``), or "auto": bf16
            where the device computes it natively (CUDA compute capability 8+, a CPU with
            AMX/AVX512-BF16) and the encoder offers it, else fp32. Part of the cache key; the
            encoder's ``precision`` and ``precision_reason`` say what was chosen and why.

    Example: ``load_encoder("dinov2-vits14", "cuda", layer="block9", pooling="mean", precision="auto")``
    """
    check_precision_name(precision)
    if encoder_id.startswith(TIMM_FILE_PREFIX):
        encoder = load_timm_file(encoder_id, resolve_device(device), layer, pooling)
    elif encoder_id.startswith(ONNX_FILE_PREFIX):
        encoder = load_onnx_file(encoder_id, resolve_device(device), layer, pooling)
    else:
        encoder = _load_registered(encoder_id, device, layer, pooling, weights, precision)
    encoder.use_precision(resolve_precision(precision, encoder.device, encoder.spec.precisions, encoder.spec.id))
    return encoder


def _load_registered(
    encoder_id: str,
    device: str | None,
    layer: str | None,
    pooling: str | None,
    weights: str | os.PathLike[str] | None,
    precision: str,
) -> BaseEncoder:
    entry = _REGISTRY.get(encoder_id)
    if entry is None:
        raise UnknownEncoderError(_unknown_message(encoder_id))
    spec = entry.spec
    layer = layer or spec.default_layer
    pooling = pooling or spec.default_pooling
    check_option("layer", layer, spec.layers, spec.id)
    check_option("pooling", pooling, spec.poolings, spec.id)
    check_offered(precision, spec.precisions, spec.id)  # before any weights load
    if weights and not Path(weights).is_file():
        raise EncoderUnavailableError(f"Weights file {weights} does not exist; pass the path of a local checkpoint.")
    if weights:
        # Other weights, other vectors: the file's identity goes into the cache key.
        spec = dataclasses.replace(spec, version=f"{spec.version}+{file_version(Path(weights))}", needs_network=False)
    try:
        return entry.loader(spec, resolve_device(device), layer, pooling, weights)
    except (EncoderUnavailableError, InvalidInputError):
        raise
    except Exception as exc:  # every loading failure becomes one actionable message
        raise _unavailable(spec, exc) from exc


def _unknown_message(encoder_id: str) -> str:
    ids = ", ".join(s.id for s in list_encoders())
    return (
        f"Unknown encoder {encoder_id!r}. Registered: {ids}. Local files: timm-file:ARCH:PATH or "
        "onnx-file:PATH#OUTPUT. List them with: python -m core encoders"
    )


def _unavailable(spec: EncoderSpec, exc: Exception) -> EncoderUnavailableError:
    offline = ", ".join(offline_encoder_ids())
    # The whole cause: a message cut mid-word ("…while trying to l") hides what went wrong.
    cause = f"{type(exc).__name__}: {exc}"
    if spec.needs_network:
        return EncoderUnavailableError(
            f"Could not load {spec.id} from {spec.source} ({cause}). "
            f"Its weights download on first use, which needs network access (or a filled hub cache). "
            f"Offline encoders: {offline}. Or pass a local weights file (--weights FILE).",
            page_message=f"Could not load {spec.name}: its weights download from {spec.source.split(':')[0]} on "
            "first use, and this server could not fetch them. Pick an offline encoder "
            f"({offline}), or give a local weights file for it.",
        )
    return EncoderUnavailableError(
        f"Could not load {spec.id}: {cause}",
        page_message=f"Could not load {spec.name}: {type(exc).__name__}. Pick another encoder, or ask whoever runs "
        "this server to check its installation.",
    )
