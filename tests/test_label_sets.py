"""Label sets (issue 10, item 6): each labelling method keeps its own names for a run's clusters,
the run shows one set (Map/Clusters names, bias cluster sets, snapshots read it), edits stay
with their set, names are unique within a set, and an old database keeps every label.

All on real DuckDB files and real image files (text and visual labellers, no mocks).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import concepts, config, images
from core.bias_runs import cluster_sets
from core.cli import main
from core.cluster import load_run, merge_clusters
from core.concepts import ClusterLabel, unique_labels
from core.errors import InvalidInputError
from core.extract import embed_dataset
from core.snapshots import load_snapshot, save_snapshot
from core.store import MIGRATIONS, SCHEMA_VERSION, LabelTakenError, Store
from ui.clusters import run_cluster_names

RUN = "r"


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def build(store: Store, root: Path, encoder: Any) -> np.ndarray:
    """Dataset 'v': 8 dark images in night/ split over clusters 0 and 1 (so their text label is
    the same word), 4 blue ones in sky/ as cluster 2, embedded with ``encoder``; stored as run
    RUN. -> cluster per image."""
    rng = np.random.default_rng(3)
    for i in range(8):
        path = root / "night" / f"night_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(rng.integers(0, 40, (24, 24, 3), dtype=np.uint8)))
    for i in range(4):
        blue = np.zeros((24, 24, 3), np.uint8)
        blue[..., 2] = rng.integers(200, 256, (24, 24))
        path = root / "sky" / f"sky_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(blue))
    scan = images.scan(root, cache_dir=store.cache_dir)
    store.ingest("v", scan.root, scan.records, scan.skipped)
    embed_dataset(store, "v", encoder, workers=1)
    frame = store.dataset_images("v")
    number = frame["rel_path"].str.extract(r"_(\d+)\.png")[0].astype(int).to_numpy()
    clusters = np.where(frame["rel_path"].str.startswith("night/").to_numpy(), number % 2, 2)
    store.save_cluster_run(RUN, "v", encoder.key, "manual", {}, frame["content_hash"].tolist(), clusters, {}, 3, 0.0)
    return clusters


@pytest.fixture
def labelled(store: Store, tmp_path: Path, pixels_encoder: Any) -> tuple[Store, dict[int, str], dict[int, str]]:
    """The run labelled with text, then visual: (store, text names, visual names) as computed."""
    build(store, tmp_path / "imgs", pixels_encoder)
    concepts._DESCRIPTOR_CACHE.clear()
    text = {c.cluster: c.label for c in concepts.label_run(store, RUN, "text")}
    visual = {c.cluster: c.label for c in concepts.label_run(store, RUN, "visual")}
    return store, text, visual


def names_of(store: Store, label_set: str | None = None) -> dict[int, str]:
    frame = store.load_cluster_labels(RUN, label_set=label_set)
    return dict(zip(frame["cluster"].astype(int), frame["label"].astype(str)))


# --------------------------------------------------------------------------- two sets, neither overwritten


def test_text_then_visual_labels_are_two_sets_and_neither_overwrites_the_other(labelled) -> None:
    store, text, visual = labelled
    assert set(text) == set(visual) == {0, 1, 2}
    assert text[2] == "sky" and text[0] == "night"  # the folder words, as the text labeller ranks them
    assert all(text[c] != visual[c] for c in text)  # the two methods really name the clusters differently
    assert names_of(store, "text") == text  # computing visual labels left the text set as it was
    assert names_of(store, "visual") == visual
    sets = store.list_label_sets(RUN).set_index("label_set")
    assert sets.index.tolist() == ["text", "visual"]
    assert sets["n_labels"].tolist() == [3, 3] and sets["n_edited"].tolist() == [0, 0]
    assert sets["shown"].tolist() == [False, True] and store.shown_label_set(RUN) == "visual"  # the newest
    assert set(store.load_cluster_labels(RUN, "text")["method"]) == {"text"}
    assert set(store.load_cluster_labels(RUN, "visual")["method"]) == {"visual"}
    # Recomputing text labels without showing them keeps the visual set shown.
    concepts.label_run(store, RUN, "text", show=False)
    assert store.shown_label_set(RUN) == "visual" and names_of(store, "text") == text


def test_the_shown_set_is_what_the_map_pickers_bias_sets_and_snapshots_read(labelled) -> None:
    store, text, visual = labelled
    run = load_run(store, RUN)
    assert run_cluster_names(store, run) == {c: f"{c} · {visual[c]}" for c in range(3)}
    assert concepts.effective_labels(store, RUN) == visual
    frame = store.dataset_images("v").set_index("content_hash")
    sizes = {c: int((run.labels == c).sum()) for c in range(3)}
    assert {name: len(members) for name, members in cluster_sets(store, RUN).items()} == {
        f"cluster {c} · {visual[c]}": sizes[c] for c in range(3)
    }
    shown_visual = load_snapshot(store, save_snapshot(store, RUN, title="labels"))
    assert dict(zip(shown_visual.clusters["cluster"], shown_visual.clusters["label"])) == visual
    assert set(shown_visual.clusters["method"]) == {"visual"}

    store.set_shown_label_set(RUN, "text")
    assert store.shown_label_set(RUN) == "text"
    assert run_cluster_names(store, run) == {c: f"{c} · {text[c]}" for c in range(3)}
    assert concepts.effective_labels(store, RUN) == text
    assert set(cluster_sets(store, RUN)) == {f"cluster {c} · {text[c]}" for c in range(3)}
    shown_text = load_snapshot(store, save_snapshot(store, RUN, title="labels"))
    assert shown_text.id != shown_visual.id
    assert dict(zip(shown_text.clusters["cluster"], shown_text.clusters["label"])) == text
    assert set(shown_text.clusters["method"]) == {"text"}
    assert len(frame) == sum(shown_text.clusters["size"])
    with pytest.raises(InvalidInputError, match="no label set 'clip'; its sets are text, visual"):
        store.set_shown_label_set(RUN, "clip")


# --------------------------------------------------------------------------- edits stay with their set


def test_an_edit_stays_in_its_set_and_survives_recomputing_that_set(labelled) -> None:
    store, text, visual = labelled
    store.set_shown_label_set(RUN, "text")
    assert store.set_cluster_label(RUN, 2, "  blue sky ") == "text"  # the shown set by default
    assert names_of(store, "text") == {**text, 2: "blue sky"}
    assert names_of(store, "visual") == visual  # the other set is untouched
    edited = store.load_cluster_labels(RUN, "text").set_index("cluster")
    assert bool(edited.loc[2, "edited"]) and edited.loc[2, "method"] == "user"
    assert edited.loc[2, "computed_label"] == "sky" and edited.loc[2, "candidates"][0]["word"] == "sky"

    again = {c.cluster: c for c in concepts.label_run(store, RUN, "text")}
    assert again[2].label == "blue sky" and again[2].edited and again[2].computed_label == "sky"
    assert names_of(store, "text")[2] == "blue sky"
    store.set_shown_label_set(RUN, "visual")
    assert concepts.effective_labels(store, RUN)[2] == visual[2]
    # An edit can name its set; the shown set does not change.
    assert store.set_cluster_label(RUN, 0, "dusk", label_set="text") == "text"
    assert store.shown_label_set(RUN) == "visual" and names_of(store, "text")[0] == "dusk"
    sets = store.list_label_sets(RUN).set_index("label_set")
    assert sets.loc["text", "n_edited"] == 2 and sets.loc["visual", "n_edited"] == 0


def test_a_name_only_a_user_gave_goes_into_a_user_set_that_is_shown(
    store: Store, tmp_path: Path, pixels_encoder: Any
) -> None:
    build(store, tmp_path / "imgs", pixels_encoder)
    assert store.set_cluster_label(RUN, 1, "owls") == "user"
    assert store.shown_label_set(RUN) == "user" and names_of(store) == {1: "owls"}
    concepts.label_run(store, RUN, "text")
    assert store.shown_label_set(RUN) == "text" and names_of(store, "user") == {1: "owls"}


def test_merge_carries_every_set_and_the_shown_one(labelled) -> None:
    store, text, visual = labelled
    store.set_cluster_label(RUN, 2, "blue sky", label_set="text")
    store.set_shown_label_set(RUN, "text")
    merged = merge_clusters(store, RUN, [0, 1])
    assert store.shown_label_set(merged.run_id) == "text"
    carried_text = store.load_cluster_labels(merged.run_id, "text").set_index("cluster")
    assert carried_text["label"].to_dict() == {2: "blue sky"} and bool(carried_text.loc[2, "edited"])
    assert store.load_cluster_labels(merged.run_id, "visual")["label"].tolist() == [visual[2]]
    assert names_of(store, "visual") == visual  # the parent keeps its labels


# --------------------------------------------------------------------------- unique names


def test_the_same_label_for_two_clusters_is_made_unique_and_the_original_kept(labelled) -> None:
    store, text, _ = labelled
    # Clusters 0 and 1 are both all of night/: both score "night" equally; the lower number keeps it
    # and, with no other candidate word, the other gets a numbered name.
    assert text == {0: "night", 1: "night (2)", 2: "sky"}
    stored = store.load_cluster_labels(RUN, "text").set_index("cluster")
    assert stored["computed_label"].to_dict() == {0: "night", 1: "night", 2: "sky"}
    for frame in (store.load_cluster_labels(RUN, s) for s in ("text", "visual")):
        assert frame["label"].str.casefold().is_unique


def test_unique_labels_prefers_the_next_best_candidate() -> None:
    def cands(*pairs: tuple[str, float]) -> list[dict]:
        return [{"word": w, "score": s} for w, s in pairs]

    labels = [
        ClusterLabel(0, "cat", "text", cands(("cat", 2.0), ("kitten", 1.5))),
        ClusterLabel(1, "cat", "text", cands(("cat", 3.0), ("tabby", 1.0))),  # the stronger claim to "cat"
        ClusterLabel(2, "dark blue", "visual", cands(("dark", 4.0), ("blue", 3.0), ("busy", 2.0))),
        ClusterLabel(3, "dark blue", "visual", cands(("dark", 3.0), ("blue", 2.0))),
        ClusterLabel(4, "Dog", "text", cands(("Dog", 1.0))),
    ]
    out = unique_labels(labels, taken={9: "dog"})
    assert [c.cluster for c in out] == [0, 1, 2, 3, 4]  # input order kept
    assert [c.label for c in out] == ["kitten", "cat", "dark blue", "dark blue (2)", "Dog (2)"]
    assert [c.computed_label for c in out] == ["cat", None, None, "dark blue", "Dog"]
    third = unique_labels([labels[2], ClusterLabel(5, "dark blue", "visual", cands(("dark", 5.0), ("busy", 1.0)))])
    assert [c.label for c in third] == ["dark blue busy", "dark blue"]
    # A label that is one of its candidates but not the first (ImageNet's rolled-up concept).
    rolled = [
        ClusterLabel(0, "dog", "imagenet", cands(("beagle", 0.5), ("dog", 0.4), ("hound", 0.3))),
        ClusterLabel(1, "dog", "imagenet", cands(("terrier", 0.6), ("dog", 0.2))),
    ]
    assert [c.label for c in unique_labels(rolled)] == ["beagle", "dog"]
    assert unique_labels(labels) == unique_labels(list(reversed(labels)))[::-1]  # order-independent


def test_a_rename_to_another_clusters_name_is_refused(labelled) -> None:
    store, text, visual = labelled
    with pytest.raises(LabelTakenError, match="Cluster 2 is already called “SKY” in the text labels") as err:
        store.set_cluster_label(RUN, 0, "SKY", label_set="text")
    assert (err.value.cluster, err.value.other, err.value.label_set) == (0, 2, "text")
    assert names_of(store, "text") == text  # nothing written
    store.set_cluster_label(RUN, 2, "sky", label_set="text")  # its own name again is fine
    store.set_cluster_label(RUN, 0, "sky", label_set="visual")  # another set may use it
    assert names_of(store, "visual")[0] == "sky"
    # A recomputed label never takes a user's name in its set.
    store.set_cluster_label(RUN, 0, "evening", label_set="text")
    store.set_cluster_label(RUN, 2, "night", label_set="text")  # free now
    recomputed = {c.cluster: c.label for c in concepts.label_run(store, RUN, "text")}
    assert recomputed == {0: "evening", 1: "night (2)", 2: "night"}
    assert names_of(store, "text") == recomputed


# --------------------------------------------------------------------------- CLI


def test_cli_lists_the_sets_and_picks_the_shown_one(tmp_path: Path, pixels_encoder: Any, capsys) -> None:
    store = Store(config.db_path(), config.cache_dir())
    build(store, tmp_path / "imgs", pixels_encoder)
    store.close()
    assert main(["labels", "--run", RUN, "--method", "text", "--json"]) == 0
    text = json.loads(capsys.readouterr().out)
    assert text["label_set"] == "text" and text["shown_label_set"] == "text"
    assert [c["label"] for c in text["labels"]] == ["night", "night (2)", "sky"]
    assert text["labels"][1]["computed_label"] == "night"
    assert main(["labels", "--run", RUN, "--method", "visual", "--keep-shown", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shown_label_set"] == "text"
    assert main(["label-sets", "--run", RUN, "--show", "visual", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shown_label_set"] == "visual"
    assert [(s["label_set"], s["n_labels"], s["shown"]) for s in out["label_sets"]] == [
        ("text", 3, False),
        ("visual", 3, True),
    ]
    assert main(["label-sets", "--run", RUN]) == 0
    assert "* visual" in capsys.readouterr().out
    assert main(["label-sets", "--run", RUN, "--show", "clip"]) == 2
    assert "no label set 'clip'" in capsys.readouterr().err
    assert main(["label-sets", "--run", "nope"]) == 2


# --------------------------------------------------------------------------- migration from the old layout


def test_an_old_database_keeps_every_label_in_the_set_of_its_method(db_file: Path, tmp_path: Path) -> None:
    db_file.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_file))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMPTZ)")
    old_version = MIGRATIONS.index(next(m for m in MIGRATIONS if m.__name__ == "m005_preferences")) + 1
    for version, migration in enumerate(MIGRATIONS[:old_version], start=1):
        migration(con)
        con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [version, migration.__name__])
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for run_id in ("a", "b", "c"):
        con.execute(
            "INSERT INTO cluster_runs VALUES (?, 'd', 'k', 'kmeans', '{}', 4, 0.0, '{}', NULL, ?)", [run_id, t0]
        )
    text_cands = json.dumps([{"word": "sky", "score": 3.0, "z": 3.0, "delta": 1.2, "count": 4, "share": 1.0}])
    visual_cands = json.dumps([{"word": "dark", "descriptor": "brightness", "score": 2.5, "z": -2.5}])
    rows = [
        # run a: text labels, then visual labels computed over them (the old overwrite), and three edits.
        ("a", 0, "sky", "text", text_cands, False, t0),
        ("a", 1, "dark", "visual", visual_cands, False, t0 + timedelta(hours=1)),
        ("a", 2, "my sky", "user", text_cands, True, t0 + timedelta(hours=2)),  # edited a text label
        ("a", 3, "my dark", "user", visual_cands, True, t0 + timedelta(hours=3)),  # edited a visual label
        ("a", 4, "typed", "user", "[]", True, t0 + timedelta(hours=4)),  # no candidates: the shown set
        # run b: only names a user typed.
        ("b", 0, "owls", "user", "[]", True, t0),
        # run c: clip labels only.
        ("c", 0, "cat", "clip", json.dumps([{"word": "cat", "score": 0.9, "similarity": 0.3}]), False, t0),
    ]
    con.executemany("INSERT INTO cluster_labels VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    con.close()

    store = Store(db_file, tmp_path / "cache")
    assert store.schema_version() == SCHEMA_VERSION > old_version
    kept = {
        (run, s, int(c), str(label))
        for run in ("a", "b", "c")
        for s in store.list_label_sets(run)["label_set"]
        for c, label in zip(store.load_cluster_labels(run, s)["cluster"], store.load_cluster_labels(run, s)["label"])
    }
    assert kept == {
        ("a", "text", 0, "sky"),
        ("a", "visual", 1, "dark"),
        ("a", "text", 2, "my sky"),
        ("a", "visual", 3, "my dark"),
        ("a", "visual", 4, "typed"),
        ("b", "user", 0, "owls"),
        ("c", "clip", 0, "cat"),
    }
    assert len(kept) == len(rows)  # every label kept, none duplicated
    assert {run: store.shown_label_set(run) for run in ("a", "b", "c")} == {"a": "visual", "b": "user", "c": "clip"}
    a_text = store.load_cluster_labels("a", "text").set_index("cluster")
    assert bool(a_text.loc[2, "edited"]) and a_text.loc[2, "method"] == "user"
    assert a_text.loc[2, "candidates"][0]["word"] == "sky"  # provenance kept
    assert a_text.loc[0, "computed_label"] == "sky" and pd.isna(a_text.loc[2, "computed_label"])
    # The migrated store works as a new one: an edit stays in the shown set.
    assert store.set_cluster_label("a", 0, "clouds") == "visual"
    assert names_of_run(store, "a", "text")[0] == "sky"
    store.close()
    reopened = Store(db_file, tmp_path / "cache")  # migrating is done once
    assert reopened.schema_version() == SCHEMA_VERSION and reopened.shown_label_set("a") == "visual"
    reopened.close()


def names_of_run(store: Store, run_id: str, label_set: str) -> dict[int, str]:
    frame = store.load_cluster_labels(run_id, label_set=label_set)
    return dict(zip(frame["cluster"].astype(int), frame["label"].astype(str)))
