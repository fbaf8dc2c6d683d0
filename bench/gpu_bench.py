"""Folder of JPEGs -> vectors committed in DuckDB: the naive pipeline, the local engine and the
pipelined engine (core.gpupipe), same files, same model, one run (issue 13).

Model: DINOv2 ViT-S/14 at 224 px through the built-in ``dinov2-vits14`` encoder, its weights a
local safetensors file this script writes from a randomly initialised timm
``vit_small_patch14_dinov2`` (no network is needed, and throughput does not depend on weight
values). Timed, each on a fresh copy of one ingested store:

1. ``naive``: a torch DataLoader over PIL + torchvision transforms (Resize 256, CenterCrop 224,
   ToTensor, Normalize), batch 64, fp32, the same model (the baseline of
   shared/bench/gpu_anchor.py: 1,436 img/s on an H200);
2. ``local``: ``core.extract.embed_dataset`` (RepLens' local engine), at ``--precision``;
3. ``pipelined``: ``core.gpupipe.embed_dataset_pipelined``, at ``--precision``, and again with
   ``torch.compile`` (``pipelined_compiled``, first run includes compiling) unless --no-compile.

Each runs ``--repeats`` times (interleaved); its best run is its figure. Then both engines embed
the distinct pictures once more in fp32 and the vectors are compared (cosine per image, 10-NN
overlap): what the decoder (nvjpeg vs libjpeg-turbo) and the resize arithmetic change.

Prints one JSON object (also written to --out, and refreshed there after every phase, so a run
cut short still leaves its figures).

    GPU (one H200, < 8 min):  python3 bench/gpu_bench.py --out $OUT/gpu_bench.json
    CPU check:                .venv/bin/python bench/gpu_bench.py --device cpu --n 64
    Agreement with a trained encoder on real pictures:
        .venv/bin/python bench/gpu_bench.py --device cpu --encoder opennsfw-resnet50 --source DIR --as-jpeg
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import images
from core.encoders import load_encoder
from core.encoders.base import BaseEncoder
from core.extract import embed_dataset
from core.gpupipe import PipelineStats, embed_dataset_pipelined
from core.store import Store

TARGET_IMG_S = 10_000
TARGET_SPEEDUP = 7.0
NAIVE_BATCH = 64
WIDTH, HEIGHT = 500, 375
KNN = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--n", type=int, help="files (default 20000 on cuda, 64 on cpu)")
    parser.add_argument("--distinct", type=int, default=4000, help="distinct pictures among them (default 4000)")
    parser.add_argument("--encoder", default="dinov2-vits14", help="dinov2-vits14 (random weights) or an offline id")
    parser.add_argument("--precision", default="auto", help="the engines' precision (naive is fp32): auto, fp32, bf16")
    parser.add_argument("--source", help="a folder of images to use instead of synthetic JPEGs")
    parser.add_argument("--as-jpeg", action="store_true", help="convert --source's images to JPEG (quality 90) first")
    parser.add_argument("--batch-size", type=int, help="engines' batch (default 256 on cuda, 32 on cpu)")
    parser.add_argument("--workers", type=int, help="reader/decoder threads (default: one per core)")
    parser.add_argument(
        "--repeats", type=int, help="timed runs per configuration (default 2 on cuda, 1 on cpu; 0: agreement only)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument(
        "--cuda-route", action="store_true", help="on CPU: the pipelined engine decodes and resizes as on CUDA"
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip optional phases past this (default 420)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "replens-gpu-bench"))
    parser.add_argument("--out", help="also write the JSON object here")
    args = parser.parse_args()
    Bench(args).run()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cuda = args.device.startswith("cuda")
        self.cuda_route = self.cuda or args.cuda_route
        self.started = time.perf_counter()
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.work = Path(args.workdir)
        self.result: dict[str, Any] = {"bench": "gpu_bench", "device": args.device, "complete": False}

    # ------------------------------------------------------------------ the run

    def run(self) -> None:
        args = self.args
        try:
            self.result.update(environment(args.device))
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(parents=True)
            files, distinct = self.corpus()
            template = self.ingest()
            encoder, weights = self.encoder(args.precision)
            self.result.update(encoder=encoder.key, precision=encoder.precision, weights=weights)
            batch = args.batch_size or (256 if self.cuda else 32)
            workers = args.workers or self.cores
            repeats = args.repeats if args.repeats is not None else (2 if self.cuda else 1)
            self.result.update(batch_size=batch, workers=workers, repeats=repeats, cuda_route=self.cuda_route)
            self.warm_up(encoder, files[0])

            if self.cuda:
                self.attempt("components", lambda: self.components(encoder, files, batch))
            runs: dict[str, list[float]] = {}
            for _ in range(repeats):
                if not args.no_naive:
                    self.attempt("naive", lambda: runs.setdefault("naive", []).append(self.naive(encoder, files)))
                self.attempt(
                    "local",
                    lambda: runs.setdefault("local", []).append(self.local(encoder, template, batch, workers)),
                )
                self.attempt(
                    "pipelined",
                    lambda: runs.setdefault("pipelined", []).append(
                        self.pipelined(encoder, template, batch, workers, False)
                    ),
                )
                self.summarise(runs)
            if self.left() > 30:
                self.attempt("agreement", lambda: self.result.update(agreement_fp32=self.agreement(template, distinct)))
            if self.cuda and not args.no_compile:
                for _ in range(2):
                    if self.left() < 90:
                        self.result["compile_skipped"] = "out of time budget"
                        break
                    compiled = self.attempt(
                        "pipelined_compiled",
                        lambda: runs.setdefault("pipelined_compiled", []).append(
                            self.pipelined(encoder, template, batch, workers, True, label="pipelined_compiled")
                        ),
                    )
                    if not compiled:
                        break
                    self.summarise(runs)
            self.result["complete"] = True
        except BaseException as exc:
            self.result["error"] = f"{type(exc).__name__}: {exc}"[:1000]
            raise
        finally:
            self.result["total_s"] = round(time.perf_counter() - self.started, 1)
            self.emit(final=True)

    def attempt(self, phase: str, work: Callable[[], None]) -> bool:
        """Run one phase; a failure is recorded (with the end of its traceback) and the other
        phases still run: one GPU session has to return every figure it can."""
        try:
            work()
            return True
        except Exception as exc:
            trace = traceback.format_exc().strip().splitlines()[-12:]
            self.result.setdefault("errors", {})[phase] = {
                "error": f"{type(exc).__name__}: {exc}"[:600],
                "trace": trace,
            }
            self.emit()
            return False

    def components(self, encoder: BaseEncoder, files: list[Path], batch: int) -> None:
        """Each GPU stage alone, on batches of the corpus: nvjpeg decode, the resize/normalise
        matrix products, the model's forward pass. Where the pipeline falls short, these say
        which stage bounds it."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        from core.gpupipe import Preprocessor

        raw = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files[: 8 * batch]]
        decoded: list[Any] = []

        def decode() -> None:
            decoded.clear()
            for i in range(0, len(raw), batch):
                decoded.extend(decode_jpeg(raw[i : i + batch], mode=ImageReadMode.RGB, device=encoder.device))

        preprocess = Preprocessor(encoder.spec, encoder.device, exact=False)

        def resize() -> None:
            for i in range(0, len(decoded), batch):
                preprocess(decoded[i : i + batch])

        x = torch.randn(batch, 3, 224, 224, device=encoder.device).contiguous(memory_format=torch.channels_last)
        features = encoder.features  # type: ignore[attr-defined]

        def forward() -> None:
            with torch.inference_mode(), encoder.autocast():  # type: ignore[attr-defined]
                for _ in range(8):
                    features(x)

        out = {}
        for name, work, n in (("nvjpeg_decode", decode, len(raw)), ("preprocess", resize, len(raw))):
            work()  # warm
            seconds, _, _ = self.timed(work)
            out[f"{name}_img_per_s"] = round(n / seconds, 1)
        forward()
        seconds, _, _ = self.timed(forward)
        out[f"forward_{encoder.precision}_img_per_s"] = round(8 * batch / seconds, 1)
        self.result["components"] = out
        self.emit()

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def emit(self, final: bool = False) -> None:
        text = json.dumps(self.result, indent=1, default=str)
        if self.args.out:
            Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.out).write_text(text)
        if final:
            print(text, flush=True)

    # ------------------------------------------------------------------ corpus, store, encoder

    def corpus(self) -> tuple[list[Path], list[Path]]:
        """(every file, one file per distinct picture)."""
        args = self.args
        folder = self.work / "images"
        started = time.perf_counter()
        if args.source:
            wanted = images.SUPPORTED_EXTENSIONS
            files = sorted(p for p in Path(args.source).rglob("*") if p.is_file() and p.suffix.lower() in wanted)
            if args.n:
                files = files[: args.n]
            if args.as_jpeg:
                with ProcessPoolExecutor(self.cores) as pool:
                    files = list(pool.map(_to_jpeg, files, [folder] * len(files), range(len(files)), chunksize=16))
            else:
                folder = Path(args.source)
            distinct = files
        else:
            n = args.n or (20_000 if self.cuda else 64)
            k = min(n, args.distinct)
            folder.mkdir(parents=True)
            with ProcessPoolExecutor(self.cores) as pool:
                files = list(pool.map(_synthetic_jpeg, [folder] * n, range(n), [k] * n, chunksize=64))
            distinct = files[:k]
        self.folder = folder
        sizes = [p.stat().st_size for p in files[:500]]
        self.result["corpus"] = {
            "source": args.source or f"synthetic {WIDTH}x{HEIGHT} JPEGs (quality 90)",
            "n_files": len(files),
            "distinct_pictures": len(distinct),
            "mean_kb": round(float(np.mean(sizes)) / 1024, 1),
            "gen_s": round(time.perf_counter() - started, 1),
        }
        if not args.source and len(files) > len(distinct):
            self.result["corpus"]["note"] = (
                "each picture is written n/distinct times, each copy with its own JPEG comment segment: distinct "
                "bytes and hashes (every file is embedded), identical pixels"
            )
        return files, distinct

    def ingest(self) -> Path:
        started = time.perf_counter()
        scan = images.scan(self.folder, workers=self.cores)
        template = self.work / "template.duckdb"
        store = Store(template, self.work / "cache")
        store.ingest("bench", scan.root, scan.records, scan.skipped)
        store.close()
        self.result["corpus"].update(scan_s=round(time.perf_counter() - started, 1), skipped=len(scan.skipped))
        return template

    def fresh_store(self, template: Path, name: str) -> Store:
        path = self.work / f"{name}.duckdb"
        path.unlink(missing_ok=True)
        shutil.copyfile(template, path)
        return Store(path, self.work / "cache")

    def encoder(self, precision: str) -> tuple[BaseEncoder, str]:
        device = self.args.device
        if self.args.encoder != "dinov2-vits14":
            return load_encoder(self.args.encoder, device, precision=precision), "the encoder's own"
        weights = self.work / "dinov2_vits14_random.safetensors"
        if not weights.exists():
            import timm
            import torch
            from safetensors.torch import save_file

            torch.manual_seed(0)
            model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        encoder = load_encoder("dinov2-vits14", device, weights=weights, precision=precision)
        return encoder, "random init (timm vit_small_patch14_dinov2, seed 0), loaded through weights="

    def warm_up(self, encoder: BaseEncoder, sample: Path) -> None:
        """Library initialisation (cuBLAS/cuDNN handles, nvjpeg's decoder) outside every timing."""
        import torch

        started = time.perf_counter()
        x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
        encoder.embed_batch(x)
        model_features = getattr(encoder, "features", None)
        if model_features is not None:
            with torch.inference_mode():
                model_features(torch.from_numpy(x).to(encoder.device))
        if self.cuda:
            from torchvision.io import ImageReadMode, decode_jpeg

            raw = torch.frombuffer(bytearray(sample.read_bytes()), dtype=torch.uint8)
            decode_jpeg([raw], mode=ImageReadMode.RGB, device=encoder.device)
            torch.cuda.synchronize()
        self.result["warm_up_s"] = round(time.perf_counter() - started, 1)

    # ------------------------------------------------------------------ the three pipelines

    def naive(self, encoder: BaseEncoder, files: list[Path]) -> float:
        import torch
        import torchvision.transforms as T

        transform = T.Compose(
            [
                T.Resize(256),
                T.CenterCrop(224),
                T.ToTensor(),
                T.Normalize(list(encoder.spec.mean), list(encoder.spec.std)),
            ]
        )
        dataset = _NaiveDataset([str(p) for p in files], transform)
        workers = max(1, min(15, self.cores - 1))
        loader = torch.utils.data.DataLoader(dataset, batch_size=NAIVE_BATCH, num_workers=workers)
        features = encoder.features  # type: ignore[attr-defined]
        vectors = []

        def work() -> None:
            with torch.inference_mode():
                for x in loader:
                    vectors.append(features(x.to(encoder.device)).float().cpu())

        seconds, cpu_s, peak = self.timed(work)
        assert sum(len(v) for v in vectors) == len(files)
        rate = len(files) / seconds
        self.record(
            "naive", rate, seconds, cpu_s, peak, {"workers": workers, "batch": NAIVE_BATCH, "precision": "fp32"}
        )
        return rate

    def local(self, encoder: BaseEncoder, template: Path, batch: int, workers: int) -> float:
        store = self.fresh_store(template, "local")
        try:
            holder: dict[str, Any] = {}
            seconds, cpu_s, peak = self.timed(
                lambda: holder.update(report=embed_dataset(store, "bench", encoder, batch_size=batch, workers=workers))
            )
            report = holder["report"]
            assert report.encoded == store.count_embeddings(encoder.key) and not report.failed
        finally:
            store.close()
        rate = report.encoded / seconds
        self.record("local", rate, seconds, cpu_s, peak, {"encoded": report.encoded})
        return rate

    def pipelined(
        self, encoder: BaseEncoder, template: Path, batch: int, workers: int, compiled: bool, label: str = "pipelined"
    ) -> float:
        store = self.fresh_store(template, label)
        stats = PipelineStats()
        try:
            holder: dict[str, Any] = {}

            def work() -> None:
                holder["report"] = embed_dataset_pipelined(
                    store,
                    "bench",
                    encoder,
                    batch_size=batch,
                    workers=workers,
                    compile_model=compiled,
                    cuda_route=self.cuda_route,
                    stats=stats,
                )

            seconds, cpu_s, peak = self.timed(work)
            report = holder["report"]
            assert report.encoded == store.count_embeddings(encoder.key) and not report.failed
        finally:
            store.close()
        rate = report.encoded / seconds
        detail = {
            "encoded": report.encoded,
            "decoded_fast": report.decoded_fast,
            "decoded_pil": report.decoded_pil,
            "stage_busy_s": report.stage_seconds,
            "max_in_flight": report.max_in_flight,
            "in_flight_bound": report.in_flight_bound,
            "queue_full_events": dict(stats.blocked_puts),
        }
        self.record(label, rate, seconds, cpu_s, peak, detail)
        return rate

    def timed(self, work: Callable[[], None]) -> tuple[float, float, float]:
        """(wall seconds, CPU seconds of this process and its children, peak GPU memory in GB)."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        cpu0 = _cpu_seconds()
        started = time.perf_counter()
        work()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else 0.0
        return seconds, _cpu_seconds() - cpu0, peak

    def record(
        self, label: str, rate: float, seconds: float, cpu_s: float, peak: float, detail: dict[str, Any]
    ) -> None:
        entry = {
            "img_per_s": round(rate, 1),
            "seconds": round(seconds, 2),
            "cpu_ms_per_img": round(1000 * cpu_s / max(1, rate * seconds), 3),
            "gpu_peak_gb": round(peak, 2),
            **detail,
        }
        self.result.setdefault("runs", {}).setdefault(label, []).append(entry)
        self.emit()

    def summarise(self, runs: dict[str, list[float]]) -> None:
        best = {label: round(max(rates), 1) for label, rates in runs.items()}
        self.result["img_per_s"] = best
        naive = best.get("naive")
        if naive:
            self.result["speedup_vs_naive"] = {k: round(v / naive, 2) for k, v in best.items() if k != "naive"}
        fastest = max((v for k, v in best.items() if k.startswith("pipelined")), default=0.0)
        self.result["target"] = {
            "img_per_s": TARGET_IMG_S,
            "speedup_vs_naive": TARGET_SPEEDUP,
            "pipelined_best_img_per_s": fastest,
            "met": bool(self.cuda and naive and fastest >= TARGET_IMG_S and fastest / naive >= TARGET_SPEEDUP),
        }
        self.emit()

    # ------------------------------------------------------------------ agreement

    def agreement(self, template: Path, distinct: list[Path]) -> dict[str, Any]:
        """Both engines in fp32 on the distinct pictures: cosine per image, 10-NN overlap."""
        encoder, _ = self.encoder("fp32")
        store = Store(template, self.work / "cache")
        try:
            wanted = {images.content_hash(p.read_bytes()) for p in distinct}
            frame = store.dataset_images("bench")
            extra = sorted(set(frame["content_hash"]) - wanted)
        finally:
            store.close()
        vectors = {}
        for label in ("local", "pipelined"):
            store = self.fresh_store(template, f"agree-{label}")
            try:
                # The other copies count as embedded already: write them a zero-cost placeholder.
                if extra:
                    store.register_encoder(
                        encoder.key,
                        encoder.spec.id,
                        encoder.spec.version,
                        encoder.layer,
                        encoder.pooling,
                        encoder.dim,
                        encoder.spec.to_dict(),
                    )
                    store.write_embeddings(encoder.key, extra, np.ones((len(extra), encoder.dim), np.float32))
                batch = self.args.batch_size or (256 if self.cuda else 32)
                if label == "local":
                    embed_dataset(store, "bench", encoder, batch_size=batch)
                else:
                    embed_dataset_pipelined(store, "bench", encoder, batch_size=batch, cuda_route=self.cuda_route)
                frame, matrix = store.load_embeddings("bench", encoder.key)
                by_hash = dict(zip(frame["content_hash"], matrix))
                vectors[label] = np.stack([by_hash[h] for h in sorted(wanted)])
            finally:
                store.close()
        return _agreement(vectors["local"], vectors["pipelined"])


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Local (``a``) vs pipelined (``b``) vectors of the same images, row by row. Also after
    subtracting the local vectors' mean: a randomly initialised ViT gives every image nearly the
    same vector, so raw cosines sit near 1 and raw neighbours are near-ties whatever the input."""
    k = min(KNN, len(a) - 1)
    out: dict[str, Any] = {"n": len(a), "max_abs_diff": round(float(np.abs(a - b).max()), 6)}
    for name, shift in (("raw", np.zeros(a.shape[1])), ("centred", a.mean(axis=0))):
        na, nb = _unit(a - shift), _unit(b - shift)
        cos = np.sum(na * nb, axis=1)
        overlap = float("nan")
        if k > 0:
            sa, sb = na @ na.T, nb @ nb.T
            np.fill_diagonal(sa, -np.inf)
            np.fill_diagonal(sb, -np.inf)
            ia, ib = np.argsort(-sa, axis=1)[:, :k], np.argsort(-sb, axis=1)[:, :k]
            overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ia, ib)]))
        out[name] = {
            "cos_mean": round(float(cos.mean()), 7),
            "cos_min": round(float(cos.min()), 7),
            "cos_p01": round(float(np.quantile(cos, 0.01)), 7),
            f"knn{k}_overlap": round(overlap, 4),
        }
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _NaiveDataset:
    def __init__(self, paths: list[str], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def _synthetic_jpeg(folder: Path, i: int, distinct: int) -> Path:
    """Picture ``i % distinct`` (smooth colour field plus noise, about as large as
    shared/bench/gpu_anchor.py's JPEGs) with a comment segment that makes file ``i`` unique."""
    rng = np.random.default_rng(i % distinct)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (WIDTH, HEIGHT), Image.Resampling.BICUBIC
    )
    pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(scale=5.0, size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    comment = f"replens-bench {i}".encode()
    data = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
    path = folder / f"{i // 1000:03d}" / f"{i:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _to_jpeg(source: Path, folder: Path, i: int) -> Path:
    path = folder / f"{i:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    images.decode_rgb(source.read_bytes()).save(path, "JPEG", quality=90)
    return path


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def environment(device: str) -> dict[str, Any]:
    import PIL
    import timm
    import torch
    import torchvision

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    if device.startswith("cuda"):
        info.update(card=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    else:
        info.update(card=platform.processor() or platform.machine(), cuda=None)
    return info


if __name__ == "__main__":
    main()
