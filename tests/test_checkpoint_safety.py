"""Issue 11: checkpoints are data, never code, and a page loads weights only from an upload or a data root.

- Every loader call in core/ is the safe kind: ``torch.load(weights_only=True)``,
  ``np.load(allow_pickle=False)``, no pickle / joblib / torch.hub.load (checked on the source).
- A malicious pickle checkpoint (its unpickling would create a file) is refused with a clear error
  wherever it enters: an upload on the Data page, and every hub loader given it as ``weights=``;
  the file is never created. A positive control shows the checkpoint really would create it.
- A page cannot make RepLens load a weights file from an arbitrary server path.
"""

from __future__ import annotations

import ast
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_safetensors
from streamlit.testing.v1 import AppTest

from conftest import build_folder
from core import encoders
from core.datasets import ingest_path
from core.encoders import load_encoder
from core.errors import EncoderUnavailableError, InvalidInputError, UnsafeCheckpointError, WeightsPathRefusedError
from core.store import Store
from core.weights import check_page_weights, save_weights

ROOT = Path(__file__).resolve().parent.parent
DATA_PAGE = str(ROOT / "pages" / "data.py")
HUB_ID = "dino-vits16"
WEIGHTS_KEY = "rl_weights"  # pages/data.py: encoder id -> (saved path, uploaded name, upload id)


class CreatesAFile:
    """Unpickled, this calls ``open(marker, "w")``: the file appearing proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def malicious_checkpoint(path: Path, marker: Path, *, raw_pickle: bool = False) -> Path:
    """A checkpoint with real tensors and one object whose unpickling creates ``marker``."""
    payload = {"state_dict": {"weight": torch.zeros(2, 2)}, "extra": CreatesAFile(marker)}
    if raw_pickle:
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    return path


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned.txt"
    return malicious_checkpoint(tmp_path / "evil.pth", marker), marker


def test_the_malicious_checkpoint_really_runs_code_when_loaded_unsafely(tmp_path: Path) -> None:
    marker = tmp_path / "control.txt"
    path = malicious_checkpoint(tmp_path / "control.pth", marker)
    torch.load(path, weights_only=False)  # what a careless loader does
    assert marker.exists()


# --------------------------------------------------------------------------- every loader in core/


def _call_name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def loader_calls() -> list[tuple[str, str, str]]:
    """(file:line, call, problem or "") for every deserialising call in core/."""
    found = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node.func)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            last = name.rsplit(".", 1)[-1]
            if name.endswith("torch.load") or last == "load_state_dict_from_url":
                found.append((where, name, "" if _keyword_is(node, "weights_only", True) else "no weights_only=True"))
            elif name in {"np.load", "numpy.load"}:
                found.append((where, name, "" if _keyword_is(node, "allow_pickle", False) else "no allow_pickle=False"))
            elif name.split(".")[0] in {"pickle", "cPickle", "dill", "cloudpickle", "joblib"} and last.startswith(
                "load"
            ):
                found.append((where, name, "unpickles"))
            elif name in {"torch.hub.load", "torch.jit.load"}:
                found.append((where, name, "runs code from the file or a repository"))
    return found


def test_every_deserialising_call_in_core_is_the_safe_kind() -> None:
    calls = loader_calls()
    names = {name for _, name, _ in calls}
    # The scan sees the loaders it is meant to check (it would pass vacuously otherwise).
    assert {"torch.load", "np.load", "torch.hub.load_state_dict_from_url"} <= names, calls
    unsafe = [f"{where}: {name} ({problem})" for where, name, problem in calls if problem]
    assert unsafe == []


# --------------------------------------------------------------------------- an upload is checked before it is kept


def test_an_uploaded_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, evil: tuple[Path, Path]) -> None:
    path, marker = evil
    cache = tmp_path / "cache"
    for name, data in (("evil.pth", path.read_bytes()), ("evil.bin", path.read_bytes())):
        with pytest.raises(UnsafeCheckpointError) as caught:
            save_weights(cache, name, data)
        assert "io.open" in str(caught.value) and "ran none of it" in caught.value.for_page()
        assert ".safetensors" in caught.value.for_page()
    raw = malicious_checkpoint(tmp_path / "raw.pkl", marker, raw_pickle=True)
    with pytest.raises(UnsafeCheckpointError):
        save_weights(cache, "legacy.ckpt", raw.read_bytes())
    assert not marker.exists()
    assert not any(p.is_file() for p in (cache / "weights").rglob("*"))  # nothing kept, no temporary file


def test_uploaded_checkpoints_that_are_plain_tensors_or_not_checkpoints(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    state = tmp_path / "state.pth"
    torch.save({"weight": torch.arange(4.0)}, state)
    kept = save_weights(cache, "model.pth", state.read_bytes())
    assert torch.load(kept, weights_only=True)["weight"].tolist() == [0.0, 1.0, 2.0, 3.0]
    tensors = save_safetensors({"w": np.ones(3, dtype=np.float32)})
    assert save_weights(cache, "model.safetensors", tensors).read_bytes() == tensors
    with pytest.raises(InvalidInputError, match="not a safetensors file"):
        save_weights(cache, "fake.safetensors", b"\xff" * 64)
    with pytest.raises(InvalidInputError, match="not a PyTorch checkpoint"):
        save_weights(cache, "fake.pth", b"hello, not a checkpoint")
    # Only the two real checkpoints were kept; the refused files left nothing behind.
    expected = [kept.name, f"{hashlib.sha256(tensors).hexdigest()}.safetensors"]
    assert sorted(p.name for p in (cache / "weights").iterdir()) == sorted(expected)


def test_an_onnx_model_pointing_at_external_data_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weight],
    )
    model = helper.make_model(graph)
    inline = tmp_path / "inline.onnx"
    onnx.save(model, str(inline))
    assert save_weights(tmp_path / "cache", "m.onnx", inline.read_bytes()).is_file()
    stored = model.graph.initializer[0]  # the graph holds a copy of ``weight``
    stored.data_location = TensorProto.EXTERNAL
    del stored.float_data[:]
    entry = stored.external_data.add()
    entry.key, entry.value = "location", "../../replens.duckdb"
    external = tmp_path / "external.onnx"
    onnx.save(model, str(external))
    with pytest.raises(InvalidInputError, match="external data"):
        save_weights(tmp_path / "cache", "ext.onnx", external.read_bytes())


# --------------------------------------------------------------------------- every hub loader, given the file


@pytest.mark.parametrize(
    "encoder_id",
    [
        HUB_ID,  # timm, pretrained_cfg_overlay=file
        "swav-resnet50",  # torch.hub.load_state_dict_from_url(file://…, weights_only=True)
        "clip-vitb32",  # open_clip's pretrained=PATH
    ],
)
def test_hub_loaders_refuse_a_malicious_checkpoint(encoder_id: str, evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(EncoderUnavailableError) as caught:
        load_encoder(encoder_id, "cpu", weights=path)
    assert "weights_only" in str(caught.value) or "Weights only load failed" in str(caught.value)
    assert not marker.exists()


def test_a_timm_file_encoder_refuses_a_malicious_checkpoint(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(EncoderUnavailableError, match="weights_only|Weights only load failed"):
        load_encoder(f"timm-file:resnet18:{path}", "cpu")
    assert not marker.exists()


def test_the_data_page_refuses_a_malicious_weights_upload(
    isolated_env: dict[str, str], evil: tuple[Path, Path]
) -> None:
    path, marker = evil
    store = Store(isolated_env["REPLENS_DB"], isolated_env["REPLENS_CACHE"])
    build_folder(Path(isolated_env["REPLENS_CACHE"]).parent / "pics")
    ingest_path(store, "pics", Path(isolated_env["REPLENS_CACHE"]).parent / "pics")
    store.close()
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    at.selectbox(key="encoder_id").set_value(HUB_ID).run()
    uploader = at.file_uploader(key=f"weights_upload_{HUB_ID}_0")
    uploader.set_value(("dino.pth", path.read_bytes(), "application/octet-stream")).run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.error) == 1 and "pickled Python objects" in at.error[0].value
    assert not marker.exists()
    assert not any(p.is_file() for p in (Path(isolated_env["REPLENS_CACHE"]) / "weights").rglob("*"))
    assert HUB_ID not in at.session_state[WEIGHTS_KEY]
    assert not any("Using the weights file" in c.value for c in at.caption)


# --------------------------------------------------------------------------- which files a page may load


def test_a_page_loads_weights_only_from_uploads_or_data_roots(tmp_path: Path) -> None:
    cache, data, outside = tmp_path / "cache", tmp_path / "data", tmp_path / "outside"
    for folder in (data, outside):
        folder.mkdir()
        (folder / "w.pth").write_bytes(b"x")
    uploaded = save_weights(cache, "w.safetensors", save_safetensors({"w": np.zeros(1, dtype=np.float32)}))
    (data / "escape").symlink_to(outside)
    roots = [data]
    allowed = [(HUB_ID, uploaded), (HUB_ID, data / "w.pth"), (HUB_ID, None), (f"onnx-file:{data}/m.onnx#out", None)]
    for encoder_id, weights in allowed:
        check_page_weights(encoder_id, weights, cache, roots)  # no error
    refused = [
        (HUB_ID, outside / "w.pth"),
        (HUB_ID, data / "escape" / "w.pth"),  # a link out of the root
        (HUB_ID, data / ".." / "outside" / "w.pth"),
        (HUB_ID, "/etc/passwd"),
        (f"timm-file:resnet18:{outside}/w.pth", None),
        (f"onnx-file:{outside}/m.onnx#out", None),
        (HUB_ID, cache / "w.pth"),  # in the cache but not an upload
    ]
    for encoder_id, weights in refused:
        with pytest.raises(WeightsPathRefusedError) as caught:
            check_page_weights(encoder_id, weights, cache, roots)
        assert str(outside) not in caught.value.for_page() and "/" not in caught.value.for_page()
    with pytest.raises(WeightsPathRefusedError):
        check_page_weights(HUB_ID, data / "w.pth", cache, [])  # no data root: only uploads


@pytest.fixture
def recorded_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Every encoder load the pages ask for, answered with an error (nothing is really loaded)."""
    from ui import resources

    calls: list[tuple[str, object]] = []

    def fake_load(encoder_id: str, device: str = "auto", **options: object) -> object:
        calls.append((encoder_id, options.get("weights")))
        raise EncoderUnavailableError("fake loader: recorded, not loaded")

    resources._loaded_encoder.clear()
    monkeypatch.setattr(resources, "load_encoder", fake_load)
    return calls


def _unfinished_run_with_weights(isolated_env: dict[str, str], weights: Path) -> str:
    """Dataset 'd' with an extraction under a weights-file key left 'running' by a process that is gone."""
    images_root = Path(isolated_env["REPLENS_DATA_ROOTS"]) / "imgs"
    build_folder(images_root)
    store = Store(isolated_env["REPLENS_DB"], isolated_env["REPLENS_CACHE"])
    try:
        ingest_path(store, "d", images_root)
        key = f"{HUB_ID}@{encoders.get_spec(HUB_ID).version}+file-1-00ff/last/cls"
        params = {"batch_size": 8, "pid": 999_999_999, "host": "gone", "weights": str(weights)}
        return store.start_run("embed", "d", key, params)
    finally:
        store.close()


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_resuming_on_the_page_loads_no_weights_file_from_outside_the_data_roots(
    tmp_path: Path,
    isolated_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    recorded_loads: list[tuple[str, object]],
    where: str,
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("REPLENS_DATA_ROOTS", str(data))
    weights = (data if where == "inside" else tmp_path / "elsewhere") / "dino.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(1)}, weights)
    run_id = _unfinished_run_with_weights({**isolated_env, "REPLENS_DATA_ROOTS": str(data)}, weights)
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    at.button(key=f"resume_{run_id}").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.error) == 1
    if where == "outside":
        assert recorded_loads == []  # refused before anything was read
        assert "may not load" in at.error[0].value and str(weights) not in at.error[0].value
    else:  # the same page, the file inside a data root: it goes to the loader (the control)
        assert recorded_loads == [(HUB_ID, str(weights))]


def test_a_remembered_weights_path_outside_the_cache_is_ignored(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    build_folder(tmp_path / "pics")
    store = Store(isolated_env["REPLENS_DB"], isolated_env["REPLENS_CACHE"])
    ingest_path(store, "pics", tmp_path / "pics")
    store.close()
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes(save_safetensors({"w": np.zeros(1, dtype=np.float32)}))
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.session_state[WEIGHTS_KEY] = {HUB_ID: (str(planted), "planted.safetensors", "upload-1")}
    at.run()
    at.selectbox(key="encoder_id").set_value(HUB_ID).run()
    assert not any("planted" in c.value for c in at.caption)
    at.button(key="extract").click().run()
    from ui.jobs import get_runner

    job = get_runner().wait(next(iter(at.session_state["rl_jobs_watched"])), timeout=60)
    assert job.kind == "embed" and "weights" not in job.params  # the hub, never the planted file
