"""The Neighbors page's mean similarity, driven with AppTest (issue 10, item 10).

The caption under the results averaged "excluding rank 1" for every query. Rank 1 is the
query itself only for an image from the dataset; for an uploaded image it is a real
neighbour. The numbers shown are checked against cosine similarities computed here with numpy.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from test_pages_clusters import DATASET, PIXELS_KEY, build_store  # noqa: E402

from core import images  # noqa: E402
from core.store import Store  # noqa: E402

PAGE = str(ROOT / "pages" / "neighbors.py")
TIMEOUT = 120
K = 5
MEAN = re.compile(r"mean cosine similarity (-?\d\.\d{3}) over")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_store(tmp_path_factory.mktemp("neighbors_page"))


@pytest.fixture()
def store(prepared: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("REPLENS_DB", prepared["db"])
    monkeypatch.setenv("REPLENS_CACHE", prepared["cache"])
    from ui import resources

    return resources.get_store()


def open_page(**state: object) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["rl_dataset"] = DATASET
    at.session_state["rl_encoder_key"] = PIXELS_KEY
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.slider(key="nb_k").set_value(K).run()
    assert not at.exception and not at.error, [e.message for e in at.exception] + [e.value for e in at.error]
    return at


def summary(at: AppTest) -> str:
    found = [c.value for c in at.caption if "neighbours ·" in c.value]
    assert len(found) == 1, [c.value for c in at.caption]
    return found[0]


def shown_mean(at: AppTest) -> float:
    match = MEAN.search(summary(at))
    assert match, summary(at)
    return float(match.group(1))


def cosines(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ (query / np.linalg.norm(query))


def test_dataset_query_leaves_out_itself(store: Store) -> None:
    frame, vectors = store.load_embeddings(DATASET, PIXELS_KEY)
    row = 4
    at = open_page(rl_query_hash=frame["content_hash"].iloc[row])
    sims = np.sort(cosines(vectors, vectors[row]))[::-1][:K]
    assert sims[0] == pytest.approx(1.0, abs=1e-5)  # rank 1 is the query image itself
    assert shown_mean(at) == pytest.approx(float(np.mean(sims[1:])), abs=6e-4)
    assert f"over ranks 2–{K} (rank 1 is the query image itself)" in summary(at)


def test_uploaded_query_averages_every_rank(store: Store) -> None:
    from core.extract import embed_images
    from ui.resources import query_encoder

    frame, vectors = store.load_embeddings(DATASET, PIXELS_KEY)
    # A picture that is not in the dataset: a dataset image's shape on a dark background.
    target = frame.iloc[2]
    picture = np.array(images.decode_rgb(images.read_bytes(target["source"], target["rel_path"])))
    picture[picture.sum(axis=2) > 600] = (20, 20, 20)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")

    at = open_page()
    at.radio(key="nb_source").set_value("Upload an image").run()
    at.file_uploader(key="nb_upload").set_value(("query.png", buf.getvalue(), "image/png")).run()
    assert not at.exception and not at.error, [e.message for e in at.exception] + [e.value for e in at.error]

    query = embed_images(query_encoder(PIXELS_KEY), [Image.fromarray(picture)])[0]
    sims = np.sort(cosines(vectors, query))[::-1][:K]
    assert sims[0] < 0.9999  # rank 1 is a neighbour, not the query
    everything, without_first = float(np.mean(sims)), float(np.mean(sims[1:]))
    assert abs(everything - without_first) > 2e-3  # the two readings differ at the precision shown
    assert shown_mean(at) == pytest.approx(everything, abs=6e-4)
    assert f"over all {K} ranks (the uploaded query is not in the dataset)" in summary(at)
