"""Embedding throughput: the RepLens pipeline vs a naive baseline, same model, same run.

Naive baseline = what a typical tool does: a torch DataLoader over PIL + torchvision
transforms (Resize/CenterCrop/ToTensor/Normalize), fp32, batch 32, then the model.
RepLens = core.extract.embed_dataset end to end (threaded decode with JPEG draft mode,
inference_mode, channels-last, bf16 autocast on CUDA, chunked DuckDB writes).

Prints one JSON object. Corpus: synthetic 500x375 JPEGs (like shared/bench/gpu_anchor.py).

    .venv/bin/python bench/embed_bench.py [--n 256] [--encoder random-resnet18] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import images
from core.encoders import load_encoder, resolve_device
from core.extract import embed_dataset
from core.store import Store


def make_corpus(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        y, x = np.mgrid[0:375, 0:500] / 60.0
        img = np.zeros((375, 500, 3))
        for c in range(3):
            for _ in range(4):
                fx, fy, ph = rng.normal(size=3)
                img[..., c] += np.sin(fx * x + fy * y + ph * 3)
        img += rng.normal(scale=0.15, size=img.shape)
        img = ((img - img.min()) / (np.ptp(img) + 1e-6) * 255).astype(np.uint8)
        path = folder / f"c{i % 4}" / f"{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def naive_pipeline(encoder, paths: list[Path], batch_size: int, workers: int) -> float:
    import torch
    import torchvision.transforms as T

    spec = encoder.spec
    tf = T.Compose(
        [
            T.Resize(round(spec.input_size / spec.crop_pct)),
            T.CenterCrop(spec.input_size),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int):
            return tf(Image.open(paths[i]).convert("RGB"))

    loader = torch.utils.data.DataLoader(Files(), batch_size=batch_size, num_workers=workers)
    # The same weights as a typical tool holds them: default (contiguous NCHW) layout, fp32.
    naive = copy.copy(encoder)
    naive.model = copy.deepcopy(encoder.model).to(memory_format=torch.contiguous_format)
    started = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            naive.features(x.to(encoder.device)).cpu()  # same model, plain fp32, no autocast
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--encoder", default="random-resnet18", help="a torch-backed encoder id")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--naive-workers", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_corpus(tmp / "imgs", args.n)
        encoder = load_encoder(args.encoder, device, weights=args.weights)
        if not hasattr(encoder, "features"):
            raise SystemExit(f"{args.encoder} is not torch-backed; the naive baseline needs a torch model")
        warm = np.stack([encoder.preprocess(Image.open(paths[0]).convert("RGB"))] * 2)
        encoder.embed_batch(warm)  # first-call allocations out of both timings
        naive_s = naive_pipeline(encoder, paths, 32, args.naive_workers)
        store = Store(tmp / "bench.duckdb", tmp / "cache")
        scan = images.scan(tmp / "imgs", cache_dir=None)
        store.ingest("bench", scan.root, scan.records, scan.skipped)
        report = embed_dataset(store, "bench", encoder)
    result = {
        "encoder": encoder.key,
        "device": device,
        "n_images": args.n,
        "cpu_count": os.cpu_count(),
        "naive_images_per_s": round(args.n / naive_s, 1),
        "replens_images_per_s": report.images_per_s,
        "speedup": round(report.images_per_s / (args.n / naive_s), 2),
        "replens_batch_size": report.batch_size,
        "naive_batch_size": 32,
        "naive_workers": args.naive_workers,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
