"""Embedding throughput: the RepLens pipeline vs a naive baseline, same model, same run.

Naive baseline = what a typical tool does: a torch DataLoader over PIL + torchvision
transforms (Resize/CenterCrop/ToTensor/Normalize), fp32, default (NCHW) memory layout,
batch 32, then the model.

RepLens = core.extract.embed_dataset end to end (threaded decode with JPEG draft mode,
inference_mode, channels-last, the precision ``--precision`` resolves to — bf16 autocast
where the device computes bf16 natively — and chunked DuckDB writes), swept over batch sizes
and decode-thread counts, plus an fp32 RepLens run at the default batch (how much of the
speedup is the pipeline and how much the precision). Every configuration runs ``--repeats``
times, interleaved, and its best run is its figure (the naive baseline's too). Besides
wall-clock img/s, every run reports CPU milliseconds per image (this process, its threads and
the DataLoader's worker processes): on a shared machine other load slows the wall clock of
whichever run it falls on, while the CPU time an image costs barely moves.

Prints one JSON object. Corpus: synthetic 500x375 JPEGs (like shared/bench/gpu_anchor.py).

    .venv/bin/python bench/embed_bench.py [--n 256] [--encoder random-resnet18] [--device auto]
        [--precision auto] [--batch-sizes 16,32,64]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import images
from core.encoders import load_encoder, resolve_device
from core.encoders.base import BaseEncoder
from core.encoders.precision import PRECISION_CHOICES, bf16_support, decode_workers, usable_cores
from core.extract import default_batch_size, embed_dataset
from core.store import Store

NAIVE_BATCH = 32


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


@dataclass(frozen=True)
class Timing:
    """One run: wall-clock img/s, and CPU seconds per image (this process, its threads and the
    DataLoader worker processes), which other load on a shared machine disturbs far less."""

    images_per_s: float
    cpu_ms_per_image: float


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()

    def timing(self, n: int) -> Timing:
        wall, cpu = time.perf_counter() - self.wall, _cpu_seconds() - self.cpu
        return Timing(round(n / wall, 2), round(1000 * cpu / n, 1))


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def naive_pipeline(encoder: Any, paths: list[Path], batch_size: int, workers: int) -> Timing:
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

        def __getitem__(self, i: int) -> Any:
            return tf(Image.open(paths[i]).convert("RGB"))

    loader = torch.utils.data.DataLoader(Files(), batch_size=batch_size, num_workers=workers)
    # The same weights as a typical tool holds them: default (contiguous NCHW) layout, fp32.
    naive = copy.copy(encoder)
    naive.model = copy.deepcopy(encoder.model).to(memory_format=torch.contiguous_format)
    with torch.no_grad():  # first-call allocations out of the timing, as for RepLens
        naive.features(torch.zeros(batch_size, 3, spec.input_size, spec.input_size, device=encoder.device))
    clock = _Clock()
    with torch.no_grad():
        for x in loader:
            naive.features(x.to(encoder.device)).cpu()  # same model, plain fp32, no autocast
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    # The loader's worker processes have exited (and been waited for) here, so RUSAGE_CHILDREN counts them.
    return clock.timing(len(paths))


def replens_run(
    encoder: BaseEncoder, folder: Path, db: Path, paths: list[Path], batch_size: int, workers: int
) -> Timing:
    """One end-to-end embed_dataset run into a fresh store (nothing cached)."""
    warm = np.stack([encoder.preprocess(Image.open(paths[0]).convert("RGB"))] * batch_size)
    encoder.embed_batch(warm)  # this batch shape's first-call set-up (oneDNN primitives) out of the timing
    store = Store(db, db.parent / f"{db.stem}-cache")
    scan = images.scan(folder, cache_dir=None)
    store.ingest("bench", scan.root, scan.records, scan.skipped)
    clock = _Clock()
    report = embed_dataset(store, "bench", encoder, batch_size=batch_size, workers=workers)
    timing = clock.timing(len(paths))
    if report.encoded != len(paths):
        raise SystemExit(f"embedded {report.encoded} of {len(paths)} images: {report.failed[:3]}")
    return Timing(report.images_per_s, timing.cpu_ms_per_image)  # img/s as embed_dataset reports it


def torch_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--encoder", default="random-resnet18", help="a torch-backed encoder id")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    parser.add_argument("--batch-sizes", default="16,32,64", help="RepLens batch sizes to sweep")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every run (best of each is reported)")
    parser.add_argument("--naive-workers", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args()
    device = resolve_device(args.device)
    load_before = os.getloadavg()
    default_batch = default_batch_size(device)
    workers = decode_workers(device)
    # The sweep: batch sizes at the decode threads RepLens sizes to the cores, and the default
    # batch at 4 threads (what RepLens used before it sized them).
    plans = [(int(b), workers) for b in args.batch_sizes.split(",")]
    if workers != 4:
        plans.append((default_batch, 4))
    naive_runs: list[Timing] = []
    runs: dict[tuple[int, int], list[Timing]] = {plan: [] for plan in plans}
    fp32_runs: list[Timing] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "imgs"
        paths = make_corpus(folder, args.n)
        encoder = load_encoder(args.encoder, device, weights=args.weights, precision=args.precision)
        if not hasattr(encoder, "features"):
            raise SystemExit(f"{args.encoder} is not torch-backed; the naive baseline needs a torch model")
        fp32 = load_encoder(args.encoder, device, weights=args.weights, precision="fp32")
        # Rounds interleave every configuration, so load that comes and goes on a shared machine
        # falls on all of them; the best of each configuration's rounds is its figure.
        for round_ in range(args.repeats):
            naive_runs.append(naive_pipeline(encoder, paths, NAIVE_BATCH, args.naive_workers))
            for i, (batch, n_workers) in enumerate(plans):
                db = tmp / f"r{round_}-{i}.duckdb"
                runs[(batch, n_workers)].append(replens_run(encoder, folder, db, paths, batch, n_workers))
            fp32_runs.append(replens_run(fp32, folder, tmp / f"r{round_}-fp32.duckdb", paths, default_batch, workers))
    naive = _best(naive_runs)
    sweep = [{"batch_size": b, "decode_workers": w, **_best(r)} for (b, w), r in runs.items()]
    default_run = next(
        (r for r in sweep if r["batch_size"] == default_batch and r["decode_workers"] == workers), sweep[0]
    )
    best = max(sweep, key=lambda r: r["images_per_s"])
    fp32_best = _best(fp32_runs)
    result = {
        "encoder": encoder.key,
        "encoder_id": encoder.spec.id,
        "device": device,
        "precision_requested": args.precision,
        "precision": encoder.precision,
        "precision_reason": encoder.precision_reason,
        "bf16_detection": {**bf16_support(device).to_dict(), "torch_cpu_capability": torch_capability()},
        "n_images": args.n,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "naive_images_per_s": naive["images_per_s"],
        "naive_cpu_ms_per_image": naive["cpu_ms_per_image"],
        "naive_runs": naive["runs"],
        "replens_images_per_s": default_run["images_per_s"],
        "replens_cpu_ms_per_image": default_run["cpu_ms_per_image"],
        "speedup": round(default_run["images_per_s"] / naive["images_per_s"], 2),
        "speedup_cpu_time": round(naive["cpu_ms_per_image"] / default_run["cpu_ms_per_image"], 2),
        "replens_batch_size": default_run["batch_size"],
        "replens_decode_workers": default_run["decode_workers"],
        "best_in_sweep": {k: best[k] for k in ("batch_size", "decode_workers", "images_per_s", "cpu_ms_per_image")},
        "best_speedup": round(best["images_per_s"] / naive["images_per_s"], 2),
        "batch_sweep": sweep,
        "replens_fp32_images_per_s": fp32_best["images_per_s"],
        "replens_fp32_cpu_ms_per_image": fp32_best["cpu_ms_per_image"],
        "replens_fp32_runs": fp32_best["runs"],
        "speedup_fp32_pipeline": round(fp32_best["images_per_s"] / naive["images_per_s"], 2),
        "naive_batch_size": NAIVE_BATCH,
        "naive_workers": args.naive_workers,
    }
    print(json.dumps(result))


def _best(timings: list[Timing]) -> dict[str, Any]:
    """A configuration's figure: its fastest run's img/s and its least CPU per image, with every run."""
    return {
        "images_per_s": max(t.images_per_s for t in timings),
        "cpu_ms_per_image": min(t.cpu_ms_per_image for t in timings),
        "runs": [asdict(t) for t in timings],
    }


if __name__ == "__main__":
    main()
