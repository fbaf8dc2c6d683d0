"""The ImageNet vocabulary per image (core.concepts.image_classes): top-1 classes, the images under
a WordNet concept, concept options with counts; the Map colouring by them and the Bias page's
"top class under CONCEPT" sets. Real photos (scikit-image's data photos), EfficientNet-Lite0's
head and Debian's WordNet 3.0 (wordnet-base); expected values from independent computations."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import images
from core.bias_runs import CONCEPT_SET_PREFIX, concept_sets, make_test
from core.concepts import ConceptTree, image_top_classes, images_under, resolve_concept
from core.concepts.image_classes import (
    concept_counts,
    concept_groups,
    concept_options,
    hashes_under,
    lite0_key,
    missing_lite0_images,
    options_from_classes,
)
from core.concepts.wordnet import WordNet, parse_wnid
from core.errors import EmbeddingsNotFoundError, InvalidInputError
from core.extract import embed_dataset
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 180
CAT, FELINE, MOTOR_VEHICLE = "n02121620", "n02120997", "n03791235"

# --------------------------------------------------------------------------- a hand-made hierarchy
#   entity ─┬─ animal ─┬─ dog ─┬─ t1
#           │          │       └─ h1
#           │          └─ cat ─── c1
#           └─ vehicle ─┬─ car
#                       └─ bus
LEAVES = ["t1", "h1", "c1", "car", "bus"]
PARENTS = {
    "t1": ["dog"],
    "h1": ["dog"],
    "c1": ["cat"],
    "dog": ["animal"],
    "cat": ["animal"],
    "animal": ["entity"],
    "car": ["vehicle"],
    "bus": ["vehicle"],
    "vehicle": ["entity"],
}


def _tree() -> ConceptTree:
    return ConceptTree.from_parents(LEAVES, PARENTS)


def _classes(leaves: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"content_hash": [f"h{i}" for i in range(len(leaves))], "class_index": [LEAVES.index(x) for x in leaves]}
    )


def test_counts_groups_and_sets_on_a_hand_made_tree() -> None:
    t = _tree()
    top1 = ["t1", "t1", "h1", "c1", "car", "car", "car", "bus"]
    classes = _classes(top1)
    counts = dict(zip(t.nodes, concept_counts(t, classes["class_index"].to_numpy()).tolist()))
    assert counts == {
        "t1": 2, "h1": 1, "c1": 1, "car": 3, "bus": 1,
        "dog": 3, "cat": 1, "animal": 4, "vehicle": 4, "entity": 8,
    }  # fmt: skip
    # Options: at least 3 images, most images first, then the more specific.
    options = options_from_classes(classes, t, min_images=3)
    assert options["synset"].tolist() == ["entity", "vehicle", "animal", "car", "dog"]  # vehicle: 2 classes
    assert options["n_images"].tolist() == [8, 4, 4, 3, 3]
    assert options.set_index("synset").loc["car", "kind"] == "class"
    assert options.set_index("synset").loc["dog", "n_classes"] == 2
    # Groups: 1 image keeps the class; 3 merges t1 and h1 into dog, c1 into animal (cat holds 1), bus into vehicle.

    def names(nodes: np.ndarray) -> list[str]:
        return [t.nodes[n] for n in nodes]

    assert names(concept_groups(t, classes["class_index"].to_numpy(), 1)) == top1
    grouped = names(concept_groups(t, classes["class_index"].to_numpy(), 3))
    assert grouped == ["dog", "dog", "dog", "animal", "car", "car", "car", "vehicle"]
    assert names(concept_groups(t, classes["class_index"].to_numpy(), 100)) == ["entity"] * 8  # none has 100
    assert hashes_under(classes, t, t.nodes.index("vehicle")) == ("h4", "h5", "h6", "h7")
    assert hashes_under(classes, t, t.nodes.index("dog")) == ("h0", "h1", "h2")
    with pytest.raises(InvalidInputError, match="min_images"):
        options_from_classes(classes, t, min_images=0)


# --------------------------------------------------------------------------- real photos

PHOTOS = {
    "cat": ("chelsea.png",),
    "coffee": ("coffee.png",),
    "rocket": ("rocket.jpg",),
    "person": ("astronaut.png",),
    "motorcycle": ("motorcycle_left.png", "motorcycle_right.png"),
}


def _photo_folder(root: Path) -> Path:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    for group, names in PHOTOS.items():
        (root / group).mkdir(parents=True)
        for name in names:
            shutil.copy(data / name, root / group / name)
    return root


@pytest.fixture(scope="module")
def lite0():
    from core.encoders import load_encoder

    return load_encoder("efficientnet-lite0", "cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, lite0) -> dict:
    """A store with dataset 'photos' (6 photos in 5 folders), embedded with Lite0 by image_top_classes;
    the expected top-1 classes from the full network forward of each photo (not the stored vectors)."""
    base = tmp_path_factory.mktemp("imageclasses")
    db, cache = base / "db.duckdb", base / "cache"
    store = Store(db, cache)
    src = _photo_folder(base / "photos")
    scan = images.scan(src, cache_dir=cache)
    store.ingest("photos", scan.root, scan.records, scan.skipped)
    assert missing_lite0_images(store, "photos") == 6
    with pytest.raises(EmbeddingsNotFoundError, match="--encoder efficientnet-lite0"):
        image_top_classes(store, "photos", encoder=lite0, embed=False)
    classes = image_top_classes(store, "photos", encoder=lite0)  # embeds the six photos once
    assert lite0.key == lite0_key()
    assert missing_lite0_images(store, "photos") == 0 and store.embedded_keys("photos") == [lite0.key]
    paths = store.dataset_images("photos").set_index("content_hash")["rel_path"].to_dict()
    direct = {}
    for rel_path in paths.values():
        with Image.open(src / rel_path) as img:
            direct[rel_path] = lite0.classify(lite0.preprocess(img.convert("RGB"))[None])[0]
    store.close()
    return {"db": db, "cache": cache, "src": src, "classes": classes, "paths": paths, "direct": direct}


def _store(photos: dict) -> Store:
    return Store(photos["db"], photos["cache"])


def test_top_classes_are_the_heads_argmax(photos: dict) -> None:
    from core.concepts import imagenet_synsets

    synsets = imagenet_synsets()
    classes = photos["classes"].set_index("content_hash")
    assert sorted(classes.index) == sorted(photos["paths"])
    wn = WordNet.find()
    for content_hash, row in classes.iterrows():
        p = photos["direct"][photos["paths"][content_hash]]
        assert row["class_index"] == int(np.argmax(p))
        assert row["synset"] == synsets[int(np.argmax(p))]
        assert row["class"] == wn.synset(parse_wnid(row["synset"])).name
        assert row["probability"] == pytest.approx(float(p.max()), abs=1e-4)


def test_chelsea_is_under_cat_and_feline_and_motor_vehicles_are_the_motorcycles(photos: dict) -> None:
    store = _store(photos)
    try:
        by_path = {p: h for h, p in photos["paths"].items()}
        chelsea = by_path["cat/chelsea.png"]
        wn = WordNet.find()
        top = photos["classes"].set_index("content_hash").loc[chelsea, "synset"]
        above = {f"n{o:08d}" for o in wn.ancestors(parse_wnid(top))}
        assert {CAT, FELINE} <= above  # independent: WordNet's own hypernym walk
        for word in ("cat", "feline", "Felid", CAT):
            assert chelsea in images_under(store, "photos", word, classes=photos["classes"])
        motorcycles = {by_path["motorcycle/motorcycle_left.png"], by_path["motorcycle/motorcycle_right.png"]}
        under = images_under(store, "photos", "motor vehicle", classes=photos["classes"])
        assert set(under) == motorcycles and len(under) == 2
        assert set(images_under(store, "photos", "motor_vehicle", classes=photos["classes"])) == motorcycles
        # Without a precomputed table, images_under computes it from the stored vectors (no new embedding).
        assert set(images_under(store, "photos", MOTOR_VEHICLE)) == motorcycles
        assert images_under(store, "photos", "dog", classes=photos["classes"]) == ()
    finally:
        store.close()


def test_concept_names_resolve_or_are_refused_with_candidates() -> None:
    from core.concepts import imagenet_tree

    t = imagenet_tree()
    assert t.nodes[resolve_concept(t, "vehicle")] == "n04524313"  # the conveyance, not the medium
    assert t.nodes[resolve_concept(t, "Motor-Vehicle")] == MOTOR_VEHICLE
    assert t.nodes[resolve_concept(t, "cat")] == CAT  # the cat family's sense, not the whip or the vehicle maker
    with pytest.raises(InvalidInputError, match="n02012849.*n03126707") as err:
        resolve_concept(t, "crane")  # the bird and the machine: one ImageNet class each
    assert "synset id" in str(err.value)
    with pytest.raises(InvalidInputError, match="Close words: vehicle"):
        resolve_concept(t, "vehicel")
    with pytest.raises(InvalidInputError, match="neither an ImageNet-1k class"):
        resolve_concept(t, "n99999999")


def test_concept_options_counts_agree_with_the_probabilities(photos: dict) -> None:
    """Each option's count = images whose argmax (full forward) has the concept among its WordNet ancestors."""
    from core.concepts import imagenet_synsets

    synsets = imagenet_synsets()
    wn = WordNet.find()
    expected: dict[str, int] = {}
    for p in photos["direct"].values():
        for offset in wn.ancestors(parse_wnid(synsets[int(np.argmax(p))])):
            expected[f"n{offset:08d}"] = expected.get(f"n{offset:08d}", 0) + 1
    store = _store(photos)
    try:
        for min_images in (1, 2, 3):
            options = concept_options(store, "photos", min_images=min_images)
            got = dict(zip(options["synset"], options["n_images"].tolist()))
            assert got == {s: n for s, n in expected.items() if n >= min_images}
            assert options["n_images"].is_monotonic_decreasing
        options = concept_options(store, "photos", 2, classes=photos["classes"]).set_index("synset")
        assert options.loc[MOTOR_VEHICLE, "concept"] == "motor vehicle" and options.loc[MOTOR_VEHICLE, "n_images"] == 2
        assert options.loc["n00001740", "n_images"] == 6 and options.loc["n00001740", "n_classes"] == 1000  # entity
    finally:
        store.close()


def test_concept_sets_for_the_bias_battery(photos: dict) -> None:
    store = _store(photos)
    try:
        sets = concept_sets(store, "photos", classes=photos["classes"])
        by_path = {p: h for h, p in photos["paths"].items()}
        motorcycles = {by_path["motorcycle/motorcycle_left.png"], by_path["motorcycle/motorcycle_right.png"]}
        assert set(sets[f"{CONCEPT_SET_PREFIX}motor vehicle"]) == motorcycles
        assert all(2 <= len(h) < 6 for h in sets.values())  # one-image sets and whole-dataset sets are left out
        assert f"{CONCEPT_SET_PREFIX}entity" not in sets
        folders = store.dataset_paths("photos")
        coffee = tuple(folders.loc[folders["rel_path"].str.startswith("coffee/"), "content_hash"])
        rocket = tuple(folders.loc[folders["rel_path"].str.startswith("rocket/"), "content_hash"])
        cat = tuple(folders.loc[folders["rel_path"].str.startswith("cat/"), "content_hash"])
        motor = sets[f"{CONCEPT_SET_PREFIX}motor vehicle"]
        test = make_test("t", {"x": motor, "y": coffee, "a": rocket, "b": cat}, {})
        assert len(test.x) == 2
        with pytest.raises(InvalidInputError, match="share|same"):
            make_test("t", {"x": motor, "y": sets[f"{CONCEPT_SET_PREFIX}vehicle"], "a": coffee, "b": cat}, {})
    finally:
        store.close()


# --------------------------------------------------------------------------- pages


def _app(photos: dict, monkeypatch: pytest.MonkeyPatch, db: Path | None = None, **state: object) -> AppTest:
    monkeypatch.setenv("REPLENS_DB", str(db or photos["db"]))
    monkeypatch.setenv("REPLENS_CACHE", str(photos["cache"]))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    return at


def _legend(at: AppTest) -> dict[str, int]:
    """The Map's legend (name: count), as the page sends it to its big map."""
    from ui.bigmap.sent import sent_maps

    maps = sent_maps(at)
    assert len(maps) == 1
    return {entry["name"]: entry["count"] for entry in maps[0].colours["entries"]}


def _expected_top1(photos: dict) -> dict[str, int]:
    from core.concepts import imagenet_synsets

    synsets, wn = imagenet_synsets(), WordNet.find()
    counts: dict[str, int] = {}
    for p in photos["direct"].values():
        name = wn.synset(parse_wnid(synsets[int(np.argmax(p))])).name
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_map_colours_by_imagenet_class(photos: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(photos, monkeypatch, rl_dataset="photos", rl_encoder_key=lite0_key())
    at.switch_page("pages/map.py").run()
    at.radio(key="map_method").set_value("PCA").run()
    at.selectbox(key="map_colour").set_value("ImageNet class").run()
    assert not at.exception, [e.message for e in at.exception]
    assert _legend(at) == _expected_top1(photos)  # e.g. {"moped": 2, "espresso": 1, ...}
    # Under one concept: the two motorcycles against the rest.
    at.selectbox(key="map_imagenet_level").set_value("Under one concept").run()
    at.selectbox(key="map_imagenet_concept").set_value(MOTOR_VEHICLE).run()
    assert _legend(at) == {"under motor vehicle": 2, "not under motor vehicle": 4}
    # Concepts with at least 2 images: every legend group is a concept holding >= 2 of the six images or
    # the images whose class is rarer, merged upwards; the counts add up to six.
    at.selectbox(key="map_imagenet_level").set_value("Concepts with at least N images").run()
    at.number_input(key="map_imagenet_min").set_value(2).run()
    legend = _legend(at)
    assert sum(legend.values()) == 6 and legend["moped"] == 2
    assert not at.exception


def test_map_offers_to_compute_missing_lite0_vectors(
    photos: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset embedded with pixels only: the Map says so, computes Lite0 on a click, then colours."""
    from core.encoders import load_encoder

    db = tmp_path / "fresh.duckdb"
    store = Store(db, photos["cache"])
    scan = images.scan(photos["src"], cache_dir=photos["cache"])
    store.ingest("photos", scan.root, scan.records, scan.skipped)
    embed_dataset(store, "photos", load_encoder("pixels", "cpu"))
    pixels_key = store.embedded_keys("photos")[0]
    store.close()
    at = _app(photos, monkeypatch, db=db, rl_dataset="photos", rl_encoder_key=pixels_key)
    at.switch_page("pages/map.py").run()
    at.radio(key="map_method").set_value("PCA").run()
    at.selectbox(key="map_colour").set_value("ImageNet class").run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("6 of 6 images" in i.value for i in at.sidebar.info)
    assert _legend(at) == {"images": 6}  # nothing computed without the click
    at.sidebar.button(key="map_lite0_compute").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert _legend(at) == _expected_top1(photos)
    store = Store(db, photos["cache"])
    try:
        assert missing_lite0_images(store, "photos") == 0
    finally:
        store.close()


def test_bias_page_builds_a_set_from_a_concept(photos: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(photos, monkeypatch, rl_dataset="photos")
    at.switch_page("pages/bias.py").run()
    assert not at.exception, [e.message for e in at.exception]
    concept = f"{CONCEPT_SET_PREFIX}motor vehicle"
    at.selectbox(key="w_bias_x").set_value(concept).run()
    assert any(c.value == f"2 images: {concept}" for c in at.caption)
    for role, folder in (("y", "coffee"), ("a", "rocket"), ("b", "cat")):
        at.selectbox(key=f"w_bias_{role}").set_value(folder).run()
    at.button(key="w_bias_add").click().run()
    assert not at.exception, [e.message for e in at.exception]
    battery = next(d.value for d in at.dataframe if "test" in d.value.columns)
    assert battery.iloc[0]["Target X"] == f"{concept} (2)"
    # The same images as a folder set: refused, as any overlap is.
    at.selectbox(key="w_bias_y").set_value("motorcycle").run()
    at.button(key="w_bias_add").click().run()
    assert any("are the same 2 image(s)" in e.value for e in at.error)
    assert len(at.session_state["rl_bias_battery"]) == 1


def test_bias_page_on_a_flat_folder_offers_concept_sets(
    photos: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lite0
) -> None:
    """Photos with no sub-folders: once they have Lite0 vectors, concept sets fill the role pickers
    (before, the page stopped at "fewer than two folders")."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in Path(photos["src"]).rglob("*.*"):
        shutil.copy(path, flat / path.name)
    db = tmp_path / "flat.duckdb"
    store = Store(db, photos["cache"])
    scan = images.scan(flat, cache_dir=photos["cache"])
    store.ingest("flat", scan.root, scan.records, scan.skipped)
    embed_dataset(store, "flat", lite0)
    store.close()
    at = _app(photos, monkeypatch, db=db, rl_dataset="flat")
    at.switch_page("pages/bias.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert not any("fewer than two folders" in w.value for w in at.warning)
    picked = at.selectbox(key="w_bias_x")
    assert any(o.startswith(f"{CONCEPT_SET_PREFIX}motor vehicle (2)") for o in picked.options)
