"""The ``imagenet`` labeller: the WordNet reader, the roll-up on a hand-made hierarchy, the
contrast with the rest, and the whole labeller on real photos (scikit-image's data photos)
through EfficientNet-Lite0's ImageNet head and Debian's WordNet 3.0 (wordnet-base)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import concepts, images
from core.concepts import ConceptTree, cluster_concepts, roll_up
from core.concepts.wordnet import (
    WordNet,
    WordNetUnavailableError,
    find_data_noun,
    parse_synset_line,
    parse_wnid,
    wnid,
)
from core.errors import EmbeddingsNotFoundError, InvalidInputError
from core.store import Store

# --------------------------------------------------------------------------- a hand-made hierarchy
#
#   animal ─┬─ dog ─┬─ terrier ─┬─ t1
#           │       │           └─ t2
#           │       └─ hound ───── h1
#           ├─ cat ─┬─ c1
#           │       └─ c2
#           └─ f1 (a fish: an animal that is no pet)
#   object ─┬─ vehicle ─┬─ car
#           │           └─ bus
#           └─ chair
#   pet (second parent of dog and cat: a DAG, like WordNet's "domestic animal")
#   entity: root above animal and object
LEAVES = ["t1", "t2", "h1", "c1", "c2", "f1", "car", "bus", "chair"]
PARENTS = {
    "t1": ["terrier"],
    "t2": ["terrier"],
    "h1": ["hound"],
    "terrier": ["dog"],
    "hound": ["dog"],
    "c1": ["cat"],
    "c2": ["cat"],
    "dog": ["animal", "pet"],
    "cat": ["animal", "pet"],
    "pet": ["entity"],
    "animal": ["entity"],
    "car": ["vehicle"],
    "bus": ["vehicle"],
    "f1": ["animal"],
    "vehicle": ["object"],
    "chair": ["object"],
    "object": ["entity"],
}


def tree() -> ConceptTree:
    return ConceptTree.from_parents(LEAVES, PARENTS)


def mass(**values: float) -> np.ndarray:
    return np.array([values.get(leaf, 0.0) for leaf in LEAVES])


def test_tree_membership_follows_every_parent() -> None:
    t = tree()
    under = {t.nodes[s]: {t.leaves[k] for k in np.flatnonzero(t.members[s])} for s in range(len(t.nodes))}
    assert under["dog"] == {"t1", "t2", "h1"}
    assert under["pet"] == {"t1", "t2", "h1", "c1", "c2"}
    assert under["animal"] == under["pet"] | {"f1"}
    assert under["entity"] == set(LEAVES)
    assert under["t1"] == {"t1"}  # a leaf is under itself
    assert dict(zip(t.nodes, t.n_under.tolist()))["vehicle"] == 2
    with pytest.raises(InvalidInputError, match="cycle"):
        ConceptTree.from_parents(["a"], {"a": ["b"], "b": ["a"]})


@pytest.mark.parametrize(
    ("leaf_mass", "coverage", "expected"),
    [
        (mass(t1=0.9, c1=0.1), 0.6, "t1"),  # one breed keeps the breed
        (mass(t1=0.5, t2=0.4, c1=0.1), 0.6, "terrier"),  # two terriers: terrier
        (mass(t1=0.2, t2=0.2, h1=0.5, car=0.1), 0.6, "dog"),  # breeds of several groups: dog
        (mass(t1=0.2, t2=0.2, h1=0.5, car=0.1), 0.95, "entity"),  # asking for 95% climbs to the root
        (mass(t1=0.3, h1=0.2, c1=0.25, c2=0.25), 0.6, "pet"),  # dogs and cats: pet (5 leaves), not animal (6)
        (mass(car=0.35, bus=0.35, t1=0.3), 0.6, "vehicle"),  # not object (3 leaves, same mass)
        (mass(car=0.5, c1=0.5), 0.5, "c1"),  # a tie on size (1 leaf) and mass: first in id order
    ],
)
def test_roll_up_picks_the_most_specific_concept_holding_the_share(
    leaf_mass: np.ndarray, coverage: float, expected: str
) -> None:
    t = tree()
    chosen = roll_up(t, leaf_mass, coverage)
    assert chosen is not None and t.nodes[chosen] == expected


def test_roll_up_edge_cases() -> None:
    t = tree()
    assert roll_up(t, np.zeros(len(LEAVES))) is None
    with pytest.raises(InvalidInputError, match="coverage"):
        roll_up(t, mass(t1=1.0), 0.0)
    with pytest.raises(InvalidInputError, match="non-negative"):
        roll_up(t, mass(t1=-1.0))


def test_cluster_concepts_contrast_with_the_rest() -> None:
    """Every image is "mostly dog". Cluster 0 is terriers, cluster 1 the hound: measured against
    each other the frequent-everywhere mass cancels and each keeps its own concept; cluster 2
    (vehicles) is named vehicle. Expected values computed by hand below."""
    t = tree()
    rows = [
        mass(t1=0.6, t2=0.2, h1=0.2),
        mass(t1=0.2, t2=0.6, h1=0.2),
        mass(t1=0.1, t2=0.1, h1=0.8),
        mass(t1=0.1, t2=0.1, h1=0.8),
        mass(car=0.5, bus=0.5),
        mass(car=0.3, bus=0.6, c1=0.1),
    ]
    labels = np.array([0, 0, 1, 1, 2, -1])  # the last image is noise: it only counts as "rest"
    out = {c.cluster: c for c in cluster_concepts(np.stack(rows), labels, t, coverage=0.6, top=2)}
    assert sorted(out) == [0, 1, 2]
    assert out[0].label == "terrier" and out[1].label == "h1" and out[2].label == "vehicle"
    assert "h1" not in [c["word"] for c in out[1].candidates[1:]]  # a class chosen as the concept is not repeated
    assert all(c.method == "imagenet" for c in out.values())
    # Cluster 0 by hand: m = (t1 .4, t2 .4, h1 .2); rest (4 images) r = (t1 .05, t2 .05, h1 .4, car .25, bus .225,
    # c1 .025). Excess (t1 .35, t2 .35): terrier holds all of it. Dog is as frequent outside (share .5 vs 1.0).
    first = out[0].candidates[0]
    assert first["kind"] == "concept" and first["synset"] == "terrier"
    assert first["cluster_share"] == pytest.approx(0.8)
    assert first["rest_share"] == pytest.approx(0.1)
    assert first["score"] == pytest.approx(0.7)
    assert first["coverage"] == pytest.approx(1.0)
    assert first["members_covered"] == pytest.approx(1.0)  # both images' top-1 class is a terrier
    assert first["rest_covered"] == pytest.approx(0.0)
    assert first["n_classes"] == 2
    classes = [c for c in out[0].candidates if c["kind"] == "class"]
    assert [c["word"] for c in classes] == ["t1", "t2"]  # ranked by cluster share − rest share (.35, .35; stable)
    assert classes[0]["score"] == pytest.approx(0.35)
    assert classes[0]["members_covered"] == pytest.approx(0.5)
    # Cluster 2 (one image): rest car .06, bus .12 → excess (car .44, bus .38): car alone holds .54 < .6 → vehicle.
    assert out[2].candidates[0]["coverage"] == pytest.approx(1.0)
    assert out[2].candidates[0]["cluster_share"] == pytest.approx(1.0)


def test_cluster_concepts_offers_a_broader_concept() -> None:
    t = tree()
    # One cluster, no rest: excess = mass; 0.6 → dog (t1+t2+h1 = .7), 0.9 → pet (dog + cat .2 = .9; animal has
    # the same mass but one more leaf).
    out = cluster_concepts(mass(t1=0.3, t2=0.2, h1=0.2, c1=0.2, car=0.1)[None], np.array([0]), t, coverage=0.6)
    words = [(c["word"], c["kind"]) for c in out[0].candidates]
    assert words[0] == ("dog", "concept") and words[-1] == ("pet", "concept")
    assert [kind for _, kind in words[1:-1]] == ["class"] * 5 and words[1] == ("t1", "class")
    with pytest.raises(InvalidInputError, match="probabilities"):
        cluster_concepts(np.ones((2, 3)), np.array([0, 0]), t)


# --------------------------------------------------------------------------- the WordNet reader


def test_parse_synset_line_reads_words_hypernyms_and_gloss() -> None:
    line = (
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 004 @ 02083346 n 0000 @ 01317541 n 0000 "
        "#m 02083863 n 0000 ~ 01322604 n 0000 | a member of the genus Canis  \n"
    )
    s = parse_synset_line(line)
    assert s.offset == 2084071 and s.wnid == "n02084071"
    assert s.words == ("dog", "domestic_dog", "Canis_familiaris") and s.name == "dog"
    assert s.hypernyms == (2083346, 1317541)  # '@' only: not member holonyms (#m) or hyponyms (~)
    assert s.gloss == "a member of the genus Canis"
    instance = parse_synset_line("09000000 15 n 01 Paris 0 002 @i 08000000 n 0000 @ 07000000 n 0000 | a city")
    assert instance.hypernyms == (8000000, 7000000)  # instance hypernyms count
    hexa = parse_synset_line("00000001 03 n 0b " + " ".join(f"w{i} 0" for i in range(11)) + " 000 | eleven words")
    assert len(hexa.words) == 11  # the word count is hexadecimal
    with pytest.raises(ValueError):
        parse_synset_line("  1 This software and database is being provided")
    assert parse_wnid("n02084071") == 2084071 and wnid(2084071) == "n02084071"


def _tiny_data_noun(folder: Path) -> tuple[Path, dict[str, int]]:
    """A data.noun whose offsets are byte positions, as in WordNet: entity ← animal ← dog."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "  1 a licence line\n"
    body = [
        "{:08d} 03 n 01 entity 0 000 | that which exists",
        "{:08d} 05 n 01 animal 0 001 @ {entity:08d} n 0000 | a living organism",
        "{:08d} 05 n 02 dog 0 domestic_dog 0 001 @ {animal:08d} n 0000 | a barking animal",
    ]
    offsets: dict[str, int] = {}
    text = header
    for name, template in zip(("entity", "animal", "dog"), body):
        offsets[name] = len(text.encode())
        text += template.format(offsets[name], **offsets) + "  \n"
    path = folder / "data.noun"
    path.write_bytes(text.encode())
    return path, offsets


def test_wordnet_reads_by_offset_and_walks_hypernyms(tmp_path: Path) -> None:
    path, offsets = _tiny_data_noun(tmp_path / "wn")
    wn = WordNet(path)
    dog_offset = offsets["dog"]
    dog = wn.synset(dog_offset)
    assert dog.words == ("dog", "domestic_dog")
    assert {wn.synset(o).name for o in wn.ancestors(dog_offset)} == {"dog", "animal", "entity"}
    with pytest.raises(WordNetUnavailableError, match="not WordNet 3.0"):
        wn.synset(dog_offset + 3)  # not a line start: another WordNet's offsets


def test_missing_wordnet_is_a_typed_error_naming_the_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    with pytest.raises(WordNetUnavailableError, match="wordnet-base") as err:
        find_data_noun([tmp_path / "nowhere"])
    assert "wordnet-base" in err.value.for_page() and str(tmp_path) not in err.value.for_page()
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "wn"))
    _tiny_data_noun(tmp_path / "wn")
    assert find_data_noun() == tmp_path / "wn" / "data.noun"


def test_debian_wordnet_3_0_knows_imagenet_ids() -> None:
    """The real data.noun (wordnet-base): ImageNet's ids are its offsets."""
    wn = WordNet.find()
    tabby = wn.synset(parse_wnid("n02123045"))
    assert tabby.name == "tabby"
    above = {wn.synset(o).name for o in wn.ancestors(tabby.offset)}
    assert {"domestic cat", "cat", "feline", "carnivore", "mammal", "animal", "entity"} <= above
    t = concepts.imagenet_tree(wn)
    assert len(t.leaves) == 1000
    dog = t.nodes.index("n02084071")
    assert t.names[dog] == "dog" and 110 <= t.n_under[dog] <= 125  # ImageNet-1k has 118 dog classes
    assert t.n_under[t.nodes.index("n00001740")] == 1000  # entity covers every class


# --------------------------------------------------------------------------- real photos, end to end

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "motorcycle_right.png")


def _skimage_photo(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


@pytest.fixture(scope="module")
def lite0():
    from core.encoders import load_encoder

    return load_encoder("efficientnet-lite0", "cpu")


def _under(tree: ConceptTree, node_wnid: str, ancestor_wnid: str) -> bool:
    """Is ``node`` at or below ``ancestor`` (every leaf under node is under ancestor)?"""
    node, ancestor = tree.nodes.index(node_wnid), tree.nodes.index(ancestor_wnid)
    return bool(tree.members[node].any() and (tree.members[ancestor] >= tree.members[node]).all())


def test_imagenet_labeller_names_real_photos(store: Store, tmp_path: Path, lite0) -> None:
    root = tmp_path / "photos"
    groups = {"cat": PHOTOS[:1], "coffee": PHOTOS[1:2], "rocket": PHOTOS[2:3], "person": PHOTOS[3:4]}
    groups["motorcycle"] = PHOTOS[4:]
    for group, names in groups.items():
        (root / group).mkdir(parents=True)
        for name in names:
            shutil.copy(_skimage_photo(name), root / group / name)
    scan = images.scan(root, cache_dir=store.cache_dir)
    store.ingest("photos", scan.root, scan.records, scan.skipped)
    frame = store.dataset_images("photos")
    cluster_of = {"cat": 0, "coffee": 1, "rocket": 2, "person": 3, "motorcycle": 4}
    store.save_cluster_run(
        "rp",
        "photos",
        "k",
        "manual",
        {},
        frame["content_hash"].tolist(),
        frame["label"].map(cluster_of).to_numpy(),
        {},
        5,
        0.0,
    )
    with pytest.raises(EmbeddingsNotFoundError, match="--encoder efficientnet-lite0"):
        concepts.label_run(store, "rp", "imagenet", encoder=lite0, embed=False)
    out = {c.cluster: c for c in concepts.label_run(store, "rp", "imagenet", encoder=lite0)}
    t = concepts.imagenet_tree()
    synset = {c: label.candidates[0]["synset"] for c, label in out.items()}
    # chelsea → a cat concept: at or below "cat" (n02121620), holding the tabby/tiger/Egyptian cat classes.
    assert _under(t, synset[0], "n02121620"), out[0]
    assert out[0].label == "domestic cat"
    assert {"tiger cat", "tabby", "Egyptian cat"} <= {c["word"] for c in out[0].candidates if c["kind"] == "class"}
    # coffee → espresso (a beverage), with most of the cup's probability.
    assert out[1].label == "espresso" and _under(t, synset[1], "n07881800")  # n07881800: beverage
    assert out[1].candidates[0]["cluster_share"] > 0.8
    # two motorcycle photos → a motor vehicle concept (moped/motor scooter classes).
    assert _under(t, synset[4], "n03791235"), out[4]  # n03791235: motor vehicle
    # rocket: its most distinctive class is the missile.
    rocket_classes = [c["word"] for c in out[2].candidates if c["kind"] == "class"]
    assert rocket_classes[0] == "missile"
    for label in out.values():
        first = label.candidates[0]
        assert label.method == "imagenet" and label.label == first["word"] and first["kind"] == "concept"
        assert first["source"].startswith(lite0.key) and "WordNet 3.0" in first["source"]
        assert 0 <= first["members_covered"] <= 1 and first["coverage"] >= concepts.DEFAULT_COVERAGE - 1e-6
    # Probabilities come from the stored Lite0 vectors (embedded once, then reused).
    assert store.embedded_keys("photos") == [lite0.key]
    stored = store.load_cluster_labels("rp").set_index("cluster")
    assert stored.loc[0, "label"] == "domestic cat" and stored.loc[0, "method"] == "imagenet"


def test_lite0_head_from_stored_vectors_equals_the_full_forward(lite0) -> None:
    with Image.open(_skimage_photo("chelsea.png")) as img:
        batch = lite0.preprocess(img)[None]
    direct = lite0.classify(batch)
    from_vectors = lite0.classify_features(lite0.embed_batch(batch))
    np.testing.assert_allclose(direct, from_vectors, atol=1e-5)
    assert direct.shape == (1, 1000) and direct.sum() == pytest.approx(1.0, abs=1e-5)
