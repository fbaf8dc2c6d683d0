"""ImageNet concept labels on the demo folder (Debian's Tux Paint stamps, installed by `make test`):
with each top-level folder as a cluster, the labeller names the folders' concepts offline.

Checked as "the label's synset is at or under the concept WordNet gives for the folder", with
the coverage the closing note reports (0.5): clip-art folders are mixed enough that "most of
the cluster" at 0.6 often needs a very general concept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import concepts
from core.cluster import load_run
from core.concepts.image_classes import resolve_concept
from core.concepts.wordnet import WordNet
from core.datasets import ingest_path
from core.store import Store

STAMPS = Path("/usr/share/tuxpaint/stamps")
# folder -> a WordNet concept its label must fall under (checked through the real hierarchy)
EXPECTED = {"animals": "animal", "vehicles": "conveyance", "military": "military vehicle", "sports": "equipment"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str]:
    assert STAMPS.is_dir(), "make test installs tuxpaint-stamps-default (the demo folder)"
    base = tmp_path_factory.mktemp("demo")
    store = Store(base / "replens.duckdb", base / "cache")
    ingest_path(store, "demo", STAMPS, thumbnails=False)
    images = store.dataset_images("demo")
    folders = images["rel_path"].str.split("/").str[0]
    names = sorted(folders.unique())
    assigned = np.array([names.index(f) for f in folders])
    store.save_cluster_run(
        "folders",
        "demo",
        "pixels@v1/pixels/none",
        "folders",
        {},
        images["content_hash"].tolist(),
        assigned,
        {},
        n_clusters=len(names),
        noise_fraction=0.0,
    )
    store.save_cluster_labels("folders", [])
    return store, ",".join(names)


def test_demo_folders_get_concepts_under_what_they_hold(demo_run: tuple[Store, str]) -> None:
    store, names = demo_run
    folder_of = dict(enumerate(names.split(",")))
    run = load_run(store, "folders")
    labels = concepts.label_run(store, run.run_id, "imagenet", coverage=0.5, save=False)
    synset = {folder_of[c.cluster]: c.candidates[0]["synset"] for c in labels}
    tree = concepts.imagenet_tree(WordNet.find(None))
    for folder, concept in EXPECTED.items():
        expected = tree.members[resolve_concept(tree, concept)]
        label = tree.members[tree.nodes.index(synset[folder])]
        # At or under: every ImageNet class under the label's concept is under the expected one.
        shown = [c.label for c in labels if folder_of[c.cluster] == folder]
        assert label.any() and not (label & ~expected).any(), (folder, shown)
