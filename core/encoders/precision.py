"""Which numeric precision an encoder runs at, and what this machine computes natively.

A vector computed in bf16 is not the fp32 vector of the same image (cosine about 0.999 to the
fp32 one, see bench/precision_agreement.py), so the precision is part of the cache key
(core.keys): ``"…/avg"`` is fp32, ``"…/avg~bf16"`` is bf16, and the two never share a matrix.

``resolve_precision`` turns what a caller asked for — ``auto``, ``fp32`` or ``bf16`` —
into the precision an encoder will run at, with the reason in words:

* ``auto``: bf16 where the device computes it natively (a CUDA GPU of compute capability 8.0 or
  later; a CPU whose flags include ``amx_bf16`` or ``avx512_bf16``) and the encoder offers it,
  else fp32. Elsewhere bf16 is emulated, slower than fp32, so ``auto`` does not pick it.
* ``fp32`` / ``bf16``: exactly that, when the encoder offers it (``spec.precisions``);
  otherwise an error naming what it offers.

The Python API's default is fp32 (:data:`DEFAULT_PRECISION`), so a caller that does not ask for a
precision gets the keys it always got; the CLI and the Data page default to ``auto``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.encoders.deps import import_torch
from core.errors import InvalidInputError
from core.keys import BF16, FP32, PRECISIONS

AUTO = "auto"
PRECISION_CHOICES = (AUTO, *PRECISIONS)  # what load_encoder(precision=…) accepts
DEFAULT_PRECISION = FP32  # load_encoder's default: existing callers keep their keys
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 instructions that compute bf16 natively


@dataclass(frozen=True)
class Bf16Support:
    """Whether ``device`` computes bf16 natively, and the evidence."""

    device: str
    native: bool
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision an encoder runs at, what was asked for, and why."""

    precision: str
    requested: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_support() -> Bf16Support:
    """bf16 on this CPU: native with AMX or AVX512-BF16 (x86 flags), else emulated."""
    found = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags()]
    if found:
        return Bf16Support("cpu", True, f"CPU flags {', '.join(found)}")
    if not cpu_flags():
        return Bf16Support("cpu", False, "no CPU flags to read (/proc/cpuinfo absent): bf16 not known to be native")
    return Bf16Support(
        "cpu", False, f"no {' or '.join(CPU_BF16_FLAGS)} in the CPU flags: bf16 would be emulated, slower than fp32"
    )


def bf16_support(device: str) -> Bf16Support:
    """Whether ``device`` ("cpu", "cuda", "cuda:1", "mps") computes bf16 natively."""
    kind = device.split(":", 1)[0]
    if kind == "cpu":
        return cpu_bf16_support()
    if kind == "cuda":
        torch = import_torch()
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return Bf16Support(device, True, f"{name}, compute capability {major}.{minor}")
        return Bf16Support(device, False, f"{name}, compute capability {major}.{minor} (bf16 needs 8.0 or later)")
    return Bf16Support(device, False, f"RepLens runs {kind} in fp32")


def check_precision_name(requested: str) -> None:
    """Refuse a precision name that is none of auto, fp32, bf16."""
    if requested not in PRECISION_CHOICES:
        raise InvalidInputError(f"precision={requested!r} is not one of {', '.join(PRECISION_CHOICES)}.")


def check_offered(requested: str, offered: Sequence[str], encoder_id: str) -> None:
    """Refuse an explicit precision the encoder does not offer, naming the ones it does."""
    check_precision_name(requested)
    if requested != AUTO and requested not in offered:
        raise InvalidInputError(
            f"{encoder_id} runs at precision {', '.join(offered)}, not {requested}; choose one of those (or auto)."
        )


def resolve_precision(requested: str, device: str, offered: Sequence[str], encoder_id: str) -> PrecisionChoice:
    """The precision ``encoder_id`` will run at on ``device`` when ``requested`` is asked for.

    Example: ``resolve_precision("auto", "cpu", ("fp32", "bf16"), "random-resnet18")`` gives bf16
    on a CPU with AMX, fp32 on one without (the reason says which).
    """
    check_offered(requested, offered, encoder_id)
    if requested == AUTO:
        if BF16 not in offered:
            return PrecisionChoice(FP32, AUTO, f"fp32: {encoder_id} offers {', '.join(offered)}")
        support = bf16_support(device)
        if support.native:
            return PrecisionChoice(BF16, AUTO, f"bf16: {device} computes it natively ({support.evidence})")
        return PrecisionChoice(FP32, AUTO, f"fp32: {support.evidence}")
    if requested == BF16 and device.startswith("mps"):
        raise InvalidInputError("bf16 on mps is not supported by RepLens; use fp32 (or auto).")
    if requested == BF16 and not bf16_support(device).native:
        return PrecisionChoice(BF16, BF16, f"bf16 as asked; emulated on {device} ({bf16_support(device).evidence})")
    return PrecisionChoice(requested, requested, f"{requested} as asked")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def decode_workers(device: str) -> int:
    """Decode/preprocess threads for an extraction on ``device``.

    On a CPU the model's forward pass uses every core (torch's intra-op threads), so decode
    threads beyond the cores only contend with it; one per core keeps a batch ready while the
    model runs (bench/embed_bench.py sweeps this). A GPU leaves the cores to decoding.
    """
    cores = usable_cores()
    return cores if device.startswith("cpu") else max(4, cores)
