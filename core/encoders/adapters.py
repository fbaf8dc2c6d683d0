"""Adapters: run a timm ViT or CNN, an open_clip model, an ONNX graph or raw pixels behind ``BaseEncoder``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from core.encoders.base import BaseEncoder
from core.encoders.deps import import_torch
from core.encoders.precision import BF16, usable_cores
from core.encoders.spec import EncoderSpec
from core.errors import EncoderUnavailableError
from core.keys import FP32


class TorchEncoder(BaseEncoder):
    """A torch module whose ``features(x)`` returns the token/feature map to pool.

    Runs in fp32 or, with precision bf16, under bf16 autocast (matrix products and convolutions
    in bf16, reductions and norms as autocast decides) on CPU or CUDA.
    """

    supported_precisions = (FP32, BF16)

    def __init__(self, spec: EncoderSpec, device: str, layer: str, pooling: str, model: Any) -> None:
        super().__init__(spec, device, layer, pooling)
        torch = import_torch()
        # Channels-last convolutions: measured +29% img/s for ResNet-18 on this CPU, more on GPUs.
        # No gradients: nothing trains through an encoder, and autocast then casts weights
        # without tracking them for backward (ResNet-18 bf16 on a 2-core AMX CPU: 51 -> 57 img/s).
        self.model = model.eval().requires_grad_(False).to(device).to(memory_format=torch.channels_last)
        self._lock = threading.Lock()  # one forward at a time per model: modules are not re-entrant safe on GPU

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = import_torch()
        x = torch.from_numpy(batch).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self._lock, torch.inference_mode(), self.autocast():
            feats = self.features(x)
        return feats.float().cpu().numpy()

    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast on this encoder's device when its precision is bf16; nothing otherwise."""
        if self.precision != BF16:
            return contextlib.nullcontext()
        torch = import_torch()
        return torch.autocast(self.device.split(":", 1)[0], dtype=torch.bfloat16)

    def features(self, x: Any) -> Any:
        raise NotImplementedError  # each torch adapter implements its feature extraction


class TimmViTEncoder(TorchEncoder):
    def features(self, x: Any) -> Any:
        if self.layer == "last":
            tokens = self.model.forward_features(x)
        else:
            index = int(self.layer.removeprefix("block"))
            ((spatial, prefix),) = self.model.forward_intermediates(
                x, indices=[index], return_prefix_tokens=True, norm=True, output_fmt="NLC", intermediates_only=True
            )
            tokens = import_torch().cat([prefix, spatial], dim=1)
        n_prefix = getattr(self.model, "num_prefix_tokens", 1)
        if self.pooling == "cls":
            return tokens[:, 0]
        return tokens[:, n_prefix:].mean(dim=1)


class TimmCNNEncoder(TorchEncoder):
    def features(self, x: Any) -> Any:
        fmap = self.model.forward_features(x)
        return _pool_map(fmap, self.pooling)


def _pool_map(fmap: Any, pooling: str) -> Any:
    if pooling == "gem":
        # GeM (Radenović et al.), p=3: emphasises strong activations; standard for retrieval.
        return fmap.float().clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1.0 / 3)
    return fmap.mean(dim=(2, 3))


class OpenClipEncoder(TorchEncoder):
    def __init__(self, spec: EncoderSpec, device: str, layer: str, pooling: str, model: Any, tokenizer: Any) -> None:
        super().__init__(spec, device, layer, pooling, model)
        self.tokenizer = tokenizer

    def features(self, x: Any) -> Any:
        return self.model.encode_image(x)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text-tower vectors (same space as the image vectors), float32 (n, dim)."""
        torch = import_torch()
        tokens = self.tokenizer(list(texts)).to(self.device)
        # The text tower runs at the image tower's precision: both halves of one key's space.
        with self._lock, torch.inference_mode(), self.autocast():
            out = self.model.encode_text(tokens)
        return out.float().cpu().numpy()


class OnnxEncoder(BaseEncoder):
    """An ONNX model run by onnxruntime, reading one named output."""

    def __init__(
        self,
        spec: EncoderSpec,
        device: str,
        layer: str,
        pooling: str,
        model_bytes: bytes,
        output_name: str,
        *,
        nhwc: bool = False,
        token_output: bool = False,
    ) -> None:
        super().__init__(spec, device, layer, pooling)
        self.session = onnx_session(model_bytes, device)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name, self.nhwc, self.token_output = output_name, nhwc, token_output

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        feed = batch.transpose(0, 2, 3, 1).copy() if self.nhwc else batch
        out = self.session.run([self.output_name], {self.input_name: feed})[0]
        if self.token_output:
            out = out[:, 0] if self.pooling == "cls" else out[:, 1:].mean(axis=1)
        return out.reshape(out.shape[0], -1)


def onnx_session(model_bytes: bytes, device: str) -> Any:
    """An onnxruntime session for ``model_bytes``: CUDA when asked for and installed, every graph
    optimisation, one intra-op thread per usable core, nodes run one after another."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime's defaults too, spelled out so that they hold whatever its defaults become;
    # bench/onnx_bench.py measures these against a bare SessionOptions().
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, sess_options=options, providers=providers)


class PixelsEncoder(BaseEncoder):
    """Baseline: the image as a small colour thumbnail (what any model should beat)."""

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(batch.shape[0], -1)


_SUBGRAPH_CACHE: dict[tuple[str, str, float], bytes] = {}


def onnx_subgraph(path: Path, output: str) -> bytes:
    """The part of an ONNX graph that computes ``output`` (later blocks and heads pruned away)."""
    import onnx
    import onnx.helper

    cache_key = (str(path.resolve()), output, path.stat().st_mtime)
    if cache_key not in _SUBGRAPH_CACHE:
        model = onnx.load(str(path))
        produced = {o for node in model.graph.node for o in node.output}
        if output not in produced:
            sample = ", ".join(sorted(produced)[-5:])
            raise EncoderUnavailableError(f"{path.name} has no node output {output!r} (some outputs: {sample}).")
        # Making the wanted tensor the only graph output lets onnxruntime's dead-node elimination
        # drop the later blocks and the task head.
        elem_type = onnx.TensorProto.FLOAT
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(output, elem_type, None))
        _SUBGRAPH_CACHE[cache_key] = model.SerializeToString()
    return _SUBGRAPH_CACHE[cache_key]
