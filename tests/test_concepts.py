"""Tests for core.concepts: TAC-style CLIP labels, log-odds text labels, visual descriptors,
and label persistence (user edits win)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import write_file
from core import concepts, images
from core.cluster import run_clustering
from core.concepts import LabellingWarning
from core.errors import EmbeddingsNotFoundError, InvalidInputError
from core.store import Store

# --------------------------------------------------------------------------- CLIP / TAC math


def constructed_case() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Three centres sharing a common direction e7; "object" lies on e7 alone, so it is the
    most similar word to *every* centre, while cat/dog/car each point at one centre."""
    e = np.eye(8)
    centres = np.stack([e[k] + 1.5 * e[7] for k in range(3)])
    words = ["object", "cat", "dog", "car", "thing"]
    vectors = np.stack([e[7], e[0] + 0.2 * e[7], e[1] + 0.2 * e[7], e[2] + 0.2 * e[7], e[7] + 0.05 * e[3]])
    return centres, vectors, words


def test_plain_argmax_repeats_a_generic_word_and_tac_does_not() -> None:
    centres, vectors, words = constructed_case()
    plain = [c[0]["word"] for c in concepts.argmax_labels(centres, vectors, words)]
    assert plain == ["object", "object", "object"]  # the failure TAC-style labelling fixes
    tac = concepts.tac_labels(centres, vectors, words, temperature=0.05)
    assert [c[0]["word"] for c in tac] == ["cat", "dog", "car"]
    assert tac[0][0]["score"] > 0.9
    # Generic words are shared evenly across clusters, so they rank below the distinctive one.
    for cands in tac:
        generic = [c for c in cands if c["word"] in ("object", "thing")]
        assert all(abs(c["score"] - 1 / 3) < 0.05 for c in generic)


def test_tac_scores_are_a_softmax_over_clusters() -> None:
    centres, vectors, words = constructed_case()
    P, S = concepts.tac_scores(centres, vectors, temperature=0.1)
    for w in range(len(words)):
        for c in range(3):
            cos = vectors[w] @ centres[c] / (np.linalg.norm(vectors[w]) * np.linalg.norm(centres[c]))
            assert S[w, c] == pytest.approx(cos)
            denom = sum(
                math.exp(vectors[w] @ centres[k] / (np.linalg.norm(vectors[w]) * np.linalg.norm(centres[k])) / 0.1)
                for k in range(3)
            )
            assert P[w, c] == pytest.approx(math.exp(cos / 0.1) / denom)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    with pytest.raises(InvalidInputError, match="temperature=0"):
        concepts.tac_scores(centres, vectors, temperature=0)
    with pytest.raises(InvalidInputError, match="dim 8 but word vectors dim 3"):
        concepts.tac_scores(centres, np.ones((5, 3)))


def test_tac_shortlist_keeps_far_words_out() -> None:
    # Two clusters; "ocean" is far from both but slightly nearer cluster 0, so its softmax
    # prefers cluster 0 as strongly as "cat" does. The relevance shortlist keeps it out.
    e = np.eye(4)
    centres = np.stack([e[0], e[1]])
    words = ["cat", "dog", "ocean"]
    vectors = np.stack([e[0] + 0.1 * e[1], e[1] + 0.1 * e[0], e[3] + 0.2 * e[0]])
    tac = concepts.tac_labels(centres, vectors, words, shortlist=1, top=1)
    assert [c[0]["word"] for c in tac] == ["cat", "dog"]


def test_embed_words_averages_normalised_prompts_and_caches(tmp_path: Path) -> None:
    class FakeText:
        key = "fake@1/last/proj"
        calls = 0

        def embed_text(self, texts):
            FakeText.calls += 1
            return np.array([[len(t), t.count("a") + 1.0, 1.0] for t in texts])

    templates = ("a photo of a {}.", "art of {}")
    out = concepts.embed_words(FakeText(), ["cat", "zebra"], templates, cache_dir=tmp_path)
    for i, word in enumerate(["cat", "zebra"]):
        raw = FakeText().embed_text([t.format(word) for t in templates])
        unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        mean = unit.mean(axis=0)
        np.testing.assert_allclose(out[i], mean / np.linalg.norm(mean), rtol=1e-6)
    calls = FakeText.calls
    concepts._TEXT_CACHE.clear()  # the disk cache alone must answer now
    again = concepts.embed_words(FakeText(), ["cat", "zebra"], templates, cache_dir=tmp_path)
    np.testing.assert_array_equal(out, again)
    assert FakeText.calls == calls
    with pytest.raises(InvalidInputError, match="needs a '{}'"):
        concepts.embed_words(FakeText(), ["cat"], ("no slot",))


def test_vocabulary_file_is_shipped_and_clean() -> None:
    words = concepts.load_vocabulary()
    assert len(words) > 1000
    assert "goldfish" in words and "cartoon" in words
    assert len({w.lower() for w in words}) == len(words)


# --------------------------------------------------------------------------- text labels


def test_log_odds_matches_a_hand_computed_case() -> None:
    # y_i = [3, 1], y_j = [1, 5], prior a = [4, 6]  →  n_i = 4, n_j = 6, a0 = 10.
    delta, z = concepts.log_odds_dirichlet(np.array([3, 1]), np.array([1, 5]), np.array([4.0, 6.0]))
    d0 = math.log((3 + 4) / (4 + 10 - 3 - 4)) - math.log((1 + 4) / (6 + 10 - 1 - 4))  # = log(7/7) − log(5/11)
    d1 = math.log((1 + 6) / (4 + 10 - 1 - 6)) - math.log((5 + 6) / (6 + 10 - 5 - 6))  # = log(7/7) − log(11/5)
    assert delta[0] == pytest.approx(d0) == pytest.approx(math.log(11 / 5))
    assert delta[1] == pytest.approx(d1)
    assert z[0] == pytest.approx(d0 / math.sqrt(1 / 7 + 1 / 5))
    assert z[1] == pytest.approx(d1 / math.sqrt(1 / 7 + 1 / 11))
    assert z[0] == pytest.approx(1.346547, abs=1e-6)
    with pytest.raises(InvalidInputError, match="prior > 0"):
        concepts.log_odds_dirichlet(np.array([1]), np.array([1]), np.array([0.0]))


def test_tokenize_lowercases_and_drops_numbers_and_stop_words() -> None:
    assert concepts.tokenize("IMG_2041 The redCar and 3 BIG_dogs v2") == ["red", "car", "big", "dogs"]
    assert concepts.tokenize(None) == []


def test_text_labels_rank_cluster_words_against_the_rest() -> None:
    tokens = [{"cat", "grey"}, {"cat"}, {"cat", "grey"}, {"dog"}, {"dog", "grey"}, {"dog"}]
    labels = np.array([0, 0, 0, 1, 1, -1])
    out = concepts.text_labels(tokens, labels)
    assert [c.label for c in out] == ["cat", "dog"]
    # Cluster 0 by hand: vocabulary (cat, dog, grey); corpus counts (3, 3, 3) = the prior.
    y_i, y_j, prior = np.array([3, 0, 2]), np.array([0, 3, 1]), np.array([3.0, 3.0, 3.0])
    n_i, n_j, a0 = 5, 4, 9
    z_cat = (math.log((3 + 3) / (n_i + a0 - 3 - 3)) - math.log((0 + 3) / (n_j + a0 - 0 - 3))) / math.sqrt(1 / 6 + 1 / 3)
    first = out[0].candidates[0]
    assert first["word"] == "cat" and first["z"] == pytest.approx(z_cat, abs=1e-4)
    assert first["count"] == 3 and first["share"] == 1.0
    _, z = concepts.log_odds_dirichlet(y_i, y_j, prior)
    assert [c["word"] for c in out[0].candidates] == ["cat", "grey"] and z[2] > 0
    with pytest.warns(LabellingWarning, match=r"clusters \[0\] have no distinctive word"):
        assert concepts.text_labels([{"x"}, {"x"}], np.array([0, 0])) == []


def test_image_tokens_use_folders_file_names_and_captions() -> None:
    frame = pd.DataFrame(
        {
            "labels": [["Wild Animals", "big_cats"]],
            "rel_path": ["Wild Animals/big_cats/lion_01.png"],
            "caption": ["A lion resting"],
        }
    )
    assert concepts.image_tokens(frame)[0] == {"wild", "animals", "big", "cats", "lion", "resting"}
    assert concepts.image_tokens(frame, sources=("caption",))[0] == {"lion", "resting"}


def test_text_labeller_on_a_stored_run(ingested) -> None:
    store, folder, _ = ingested
    hashes = store.dataset_images("d")
    truth = hashes["label"].map({"cats": 0, "dogs": 1, "birds": 2}).to_numpy()
    store.save_cluster_run("r", "d", "k", "manual", {}, hashes["content_hash"].tolist(), truth, {}, 3, 0.0)
    out = {c.cluster: c for c in concepts.label_run(store, "r", "text")}
    assert {out[0].candidates[0]["word"], out[0].candidates[1]["word"]} == {"cat", "cats"}
    assert out[0].label == "cat"  # equal z: alphabetical
    assert out[2].label in ("bird", "birds")
    stored = store.load_cluster_labels("r").set_index("cluster")
    assert stored.loc[0, "method"] == "text" and stored.loc[0, "candidates"][0]["word"] == "cat"


# --------------------------------------------------------------------------- visual labels


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (*size[::-1], 3))


@pytest.mark.parametrize(
    "rgb,name",
    [
        ((0, 0, 255), "blue"),
        ((255, 0, 0), "red"),
        ((10, 10, 10), "black"),
        ((250, 250, 250), "white"),
        ((128, 128, 128), "grey"),
        ((120, 60, 20), "brown"),
        ((0, 200, 0), "green"),
        ((255, 220, 0), "yellow"),
        ((255, 120, 200), "pink"),
        ((255, 140, 0), "orange"),
    ],
)
def test_colour_names(rgb: tuple[int, int, int], name: str) -> None:
    fractions = concepts.colour_fractions(solid(rgb))
    assert fractions[name] == 1.0 and sum(fractions.values()) == pytest.approx(1.0)


def test_visual_descriptors_measure_what_they_say() -> None:
    flat = Image.fromarray(np.ascontiguousarray(solid((40, 40, 40), (32, 16))))
    checker = Image.fromarray(((np.indices((32, 32)) // 4).sum(axis=0) % 2 * 255).astype(np.uint8)).convert("RGB")
    d_flat, d_check = concepts.visual_descriptors(flat), concepts.visual_descriptors(checker)
    assert d_flat["brightness"] == pytest.approx(40 / 255, abs=1e-3) and d_flat["contrast"] == 0.0
    assert d_flat["edge_density"] == 0.0 and d_check["edge_density"] > 0.5
    assert d_flat["log_aspect_ratio"] == pytest.approx(math.log(2))
    assert concepts.visual_descriptors(flat, width=10, height=100)["log_aspect_ratio"] == pytest.approx(math.log(0.1))
    assert d_flat["colorfulness"] == 0.0 and d_flat["colour_black"] == 1.0


def test_descriptor_labels_are_welch_z_scores_turned_into_words() -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "brightness": np.r_[rng.uniform(0.0, 0.2, 10), rng.uniform(0.6, 0.9, 10)],
            "colour_blue": np.r_[rng.uniform(0.0, 0.1, 10), rng.uniform(0.5, 0.9, 10)],
            "contrast": rng.uniform(0.2, 0.3, 20),
        }
    )
    labels = np.repeat([0, 1], 10)
    out = concepts.descriptor_labels(table, labels, min_z=2.0)
    dark, bright = out
    a, b = table["brightness"][:10], table["brightness"][10:]
    z = (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / 10 + b.var(ddof=1) / 10)
    top = {c["descriptor"]: c for c in dark.candidates}
    assert top["brightness"]["z"] == pytest.approx(z, abs=1e-3) and top["brightness"]["word"] == "dark"
    assert "blue" not in [c["word"] for c in dark.candidates]  # low colour share has no word
    assert set(bright.label.split()) == {"bright", "blue"}
    assert set(dark.label.split()) <= {"dark", "low-contrast", "high-contrast"}


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_visual_labeller_on_real_files_uses_thumbnails_and_cache(store: Store, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    root = tmp_path / "vis"
    for i in range(6):
        write_file(root, f"a/dark_{i}.png", _png(rng.integers(0, 40, (24, 24, 3), dtype=np.uint8)))
        blue = np.zeros((24, 24, 3), np.uint8)
        blue[..., 2] = rng.integers(200, 256, (24, 24))
        write_file(root, f"b/sky_{i}.png", _png(blue))
    scan = images.scan(root, cache_dir=store.cache_dir)
    store.ingest("v", scan.root, scan.records, scan.skipped)
    frame = store.dataset_images("v")
    store.save_cluster_run(
        "rv",
        "v",
        "k",
        "manual",
        {},
        frame["content_hash"].tolist(),
        (frame["label"] == "b").astype(int).to_numpy(),
        {},
        2,
        0.0,
    )
    concepts._DESCRIPTOR_CACHE.clear()
    out = {c.cluster: c for c in concepts.label_run(store, "rv", "visual")}
    assert {"dark", "black"} & set(out[0].label.split())
    assert "blue" in out[1].label.split() or "bright" in out[1].label.split()
    assert len(concepts._DESCRIPTOR_CACHE) == 12
    # Edits win: a user's name survives recomputation.
    store.set_cluster_label("rv", 0, "night shots")
    again = {c.cluster: c for c in concepts.label_run(store, "rv", "visual")}
    assert again[0].label == "night shots" and again[0].edited and again[0].method == "user"
    assert concepts.effective_labels(store, "rv")[0] == "night shots"


# --------------------------------------------------------------------------- CLIP end to end


def test_clip_labels_need_clip_embeddings(ingested) -> None:
    store, _, _ = ingested
    frame = store.dataset_images("d")
    store.save_cluster_run(
        "r", "d", "k", "manual", {}, frame["content_hash"].tolist(), np.zeros(len(frame), int), {}, 1, 0.0
    )
    with pytest.raises(EmbeddingsNotFoundError, match="--encoder clip-vitb32"):
        concepts.label_run(store, "r", "clip")
    with pytest.raises(InvalidInputError, match="Unknown labelling method 'llm'"):
        concepts.label_run(store, "r", "llm")


def test_clip_labeller_with_random_weights_loaded_from_a_file(ingested, tmp_path: Path) -> None:
    import open_clip
    import torch

    from core.encoders import load_encoder
    from core.extract import embed_dataset

    store, _, _ = ingested
    torch.manual_seed(0)
    path = tmp_path / "clip-random.pt"
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)  # half: a smaller file, same path
    del model
    enc = load_encoder("clip-vitb32", "cpu", weights=path)
    embed_dataset(store, "d", enc, workers=1)
    run = run_clustering(store, "d", enc.key, "kmeans", {"n_clusters": 3, "reduce": None})
    words = ["cat", "dog", "bird", "car", "tree", "house", "boat", "cloud"]
    out = concepts.label_run(
        store,
        run.run_id,
        "clip",
        encoder=enc,
        vocabulary=words[:6],
        extra_words=words[6:],
        templates=("a photo of a {}.",),
        top=3,
    )
    assert [c.cluster for c in out] == [0, 1, 2]
    assert len({c.label for c in out}) == 3  # distinctive
    for c in out:
        assert c.method == "clip" and c.label == c.candidates[0]["word"] and len(c.candidates) == 3
        assert all(0 < x["score"] <= 1 and -1 <= x["similarity"] <= 1 for x in c.candidates)
        assert {x["word"] for x in c.candidates} <= set(words)
    # Known answer through the real text tower: centres built from two words' own vectors.
    vectors = concepts.embed_words(enc, words, ("a photo of a {}.",))
    tac = concepts.tac_labels(vectors[[1, 4]], vectors, words, top=1)
    assert [t[0]["word"] for t in tac] == ["dog", "tree"]
    stored = store.load_cluster_labels(run.run_id)
    assert (stored["method"] == "clip").all() and len(stored) == 3


def test_clip_labels_of_bf16_vectors_load_the_bf16_text_tower(ingested, tmp_path: Path) -> None:
    """Without an encoder passed in (the CLI, a labelling job), the text tower is loaded at the
    precision the image vectors were stored at: a bf16 dataset is labelled, not refused."""
    import open_clip
    import torch

    from core.encoders import load_encoder
    from core.extract import embed_dataset

    store, _, _ = ingested
    torch.manual_seed(1)
    path = tmp_path / "clip-random.pt"
    torch.save({k: v.half() for k, v in open_clip.create_model("ViT-B-32", pretrained=None).state_dict().items()}, path)
    enc = load_encoder("clip-vitb32", "cpu", weights=path, precision="bf16")
    assert enc.key.endswith("~bf16")
    embed_dataset(store, "d", enc, workers=1, weights=str(path))
    run = run_clustering(store, "d", enc.key, "kmeans", {"n_clusters": 2, "reduce": None})
    out = concepts.label_run(
        store, run.run_id, "clip", weights=str(path), vocabulary=["cat", "dog", "tree"], templates=("a {}.",), top=2
    )
    assert [c.cluster for c in out] == [0, 1] and all(c.label in {"cat", "dog", "tree"} for c in out)
