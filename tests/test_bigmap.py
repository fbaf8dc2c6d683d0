"""The big map's Python side: the binary payloads round-trip, their content ids are stable, chunks
stay under their limit, the legend follows the palette, and selections decode safely."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from core.mapfigure import MAX_LEGEND_GROUPS, Colouring, cluster_names, colour_by_cluster, colour_by_folder
from core.palette import OTHER_COLOUR, category_colour, cluster_colour
from ui.bigmap import selection_of
from ui.bigmap.encoding import (
    ALIGN,
    PayloadError,
    Section,
    content_id,
    indices_from_b64,
    indices_to_b64,
    join,
    names_of,
    names_section,
    pack,
    split,
    unpack,
)
from ui.bigmap.payloads import VIRIDIS_STOPS, colours_blob, points_blob
from ui.bigmap.sent import SentMap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _coords(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 5, (n, 2)).astype(np.float32)


def _names(n: int) -> list[str]:
    return [f"dir {i % 7}/ünï_{i:05d} & <b>.png" for i in range(n)]


def test_points_blob_round_trips_coordinates_and_names_exactly() -> None:
    coords, names = _coords(1003), _names(1003)
    meta, arrays = unpack(points_blob(coords, names))
    assert meta["n"] == 1003
    assert np.array_equal(arrays["xy"].reshape(-1, 2), coords)  # float32, bit for bit
    assert names_of(arrays) == names
    assert meta["bounds"] == pytest.approx(
        [coords[:, 0].min(), coords[:, 0].max(), coords[:, 1].min(), coords[:, 1].max()]
    )


def test_sections_start_on_eight_byte_boundaries() -> None:
    """The browser views sections as typed arrays in place: each must be aligned for float32/uint32."""
    blob = pack(
        {"k": "v" * 13},
        [Section("a", np.arange(3, dtype=np.uint8)), Section("b", np.arange(5, dtype=np.float32))],
    )
    length = int.from_bytes(blob[4:8], "little")
    assert (8 + length) % ALIGN == 0
    meta, arrays = unpack(blob)
    import json

    header = json.loads(blob[8 : 8 + length])
    assert all(entry["offset"] % ALIGN == 0 for entry in header["sections"])
    assert arrays["a"].tolist() == [0, 1, 2] and arrays["b"].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
def test_every_dtype_round_trips(dtype: type) -> None:
    values = (np.arange(300) * 7 % 251).astype(dtype)
    _, arrays = unpack(pack({}, [Section("v", values, deflate=bool(dtype == np.uint16))]))
    assert arrays["v"].dtype == np.dtype(dtype).newbyteorder("<") and np.array_equal(arrays["v"], values)


def test_unsupported_dtype_and_bad_blobs_are_refused() -> None:
    with pytest.raises(PayloadError, match="float64"):
        pack({}, [Section("v", np.zeros(2, dtype=np.float64))])
    with pytest.raises(PayloadError, match="magic"):
        unpack(b"JUNKJUNKJUNK")
    blob = pack({}, [Section("v", np.zeros(64, dtype=np.float32))])
    with pytest.raises(PayloadError):
        unpack(blob[:-100])


def test_content_id_is_stable_across_processes_and_changes_with_content() -> None:
    coords, names = _coords(500), _names(500)
    here = content_id(points_blob(coords, names))
    assert here == content_id(points_blob(coords.copy(), list(names)))
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.test_bigmap import _coords, _names;"
        "from ui.bigmap.payloads import points_blob; from ui.bigmap.encoding import content_id;"
        "print(content_id(points_blob(_coords(500), _names(500))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run([sys.executable, "-c", script, ROOT], capture_output=True, text=True, env=env, check=True)
    assert there.stdout.strip() == here
    moved = coords.copy()
    moved[17, 0] = np.nextafter(moved[17, 0], np.float32(np.inf))  # one ulp on one point
    assert content_id(points_blob(moved, names)) != here
    assert content_id(points_blob(coords, names[:-1] + ["other.png"])) != here


def test_chunks_stay_under_the_limit_and_join_back_in_any_order() -> None:
    blob = points_blob(_coords(20_000), _names(20_000))
    limit = 50_000
    chunks = split(blob, content_id(blob), limit)
    assert len(chunks) == -(-len(blob) // (limit - 512 - (limit - 512) % ALIGN))
    assert all(len(chunk) <= limit for chunk in chunks)
    blob_id, joined = join(list(reversed(chunks)))
    assert blob_id == content_id(blob) and joined == blob
    with pytest.raises(PayloadError, match="parts"):
        join(chunks[:-1])


def test_names_with_nul_free_unicode_survive() -> None:
    names = ["a/b.png", "ü/ç €.jpg", "", "deep/er/x.webp"]
    _, arrays = unpack(pack({}, [names_section(names)]))
    assert names_of(arrays) == names


def test_folder_legend_follows_the_palette_by_size() -> None:
    labels = ["cats"] * 5 + ["dogs"] * 9 + ["birds"] * 2 + [""] * 3
    frame = pd.DataFrame({"label": labels})
    meta, arrays = unpack(colours_blob(colour_by_folder(frame), len(frame)))
    order = ["dogs", "cats", "(top level)", "birds"]  # largest first
    assert [e["name"] for e in meta["entries"]] == order
    assert [e["colour"] for e in meta["entries"]] == [category_colour(i) for i in range(4)]
    assert [e["count"] for e in meta["entries"]] == [9, 5, 3, 2]
    shown = np.array(meta["names"])[arrays["codes"]]
    assert shown.tolist() == [lab or "(top level)" for lab in labels]


def test_cluster_legend_colours_each_cluster_by_its_id() -> None:
    hashes = [f"h{i}" for i in range(12)]
    frame = pd.DataFrame({"content_hash": hashes + ["outside"]})
    labels = np.array([7] * 6 + [2] * 3 + [4, -1, -1])
    names = cluster_names([7, 2, 4, -1], {7: "seven", 4: "four"})
    colouring = colour_by_cluster(frame, hashes, labels, names)
    meta, arrays = unpack(colours_blob(colouring, len(frame)))
    colour_of = {e["name"]: e["colour"] for e in meta["entries"]}
    assert colour_of == {
        "7 · seven": cluster_colour(7),
        "cluster 2": cluster_colour(2),
        "4 · four": cluster_colour(4),
        "noise": OTHER_COLOUR,
        "not in this run": OTHER_COLOUR,
    }
    entry_names = [meta["entries"][e]["name"] for e in arrays["entry_of"][arrays["codes"]]]
    assert entry_names[:6] == ["7 · seven"] * 6 and entry_names[-1] == "not in this run"


def test_more_categories_than_the_legend_holds_share_one_grey_entry() -> None:
    n_groups = MAX_LEGEND_GROUPS + 5
    categories = np.array([f"g{i:02d}" for i in range(n_groups) for _ in range(n_groups - i)], dtype=object)
    meta, arrays = unpack(colours_blob(Colouring("Folder", categories=categories), len(categories)))
    assert len(meta["entries"]) == MAX_LEGEND_GROUPS + 1
    assert meta["entries"][-1] == {"name": "other (5 groups)", "colour": OTHER_COLOUR, "count": 5 + 4 + 3 + 2 + 1}
    # Hover still names each point's own category, grouped or not.
    assert np.array_equal(np.array(meta["names"], dtype=object)[arrays["codes"]], categories)


def test_numeric_colouring_sends_values_and_a_viridis_scale() -> None:
    values = np.array([3.0, np.nan, 10.0, 5.5])
    meta, arrays = unpack(colours_blob(Colouring("Width (px)", values=values), 4))
    assert meta["mode"] == "values" and (meta["min"], meta["max"]) == (3.0, 10.0)
    assert meta["scale"][0] == VIRIDIS_STOPS[0] and meta["scale"][-1] == VIRIDIS_STOPS[-1]
    assert len(meta["scale"]) == 256
    np.testing.assert_array_equal(arrays["values"], values.astype(np.float32))


def test_selection_indices_decode_and_are_checked() -> None:
    rows = np.array([5, 1, 99_999, 1])
    assert indices_from_b64(indices_to_b64(rows), 100_000).tolist() == [1, 5, 99_999]
    with pytest.raises(PayloadError, match="out of range"):
        indices_from_b64(indices_to_b64(rows), 99_999)
    value = {"points": "abc", "kind": "box", "indices": indices_to_b64(np.array([3, 4]))}
    picked = selection_of(value, "abc", 10)
    assert picked is not None and picked.rows.tolist() == [3, 4] and picked.kind == "box"
    assert selection_of(value, "another layout", 10) is None  # made on other points: dropped
    assert selection_of(None, "abc", 10) is None


def test_points_blob_refuses_non_finite_coordinates() -> None:
    coords = _coords(4)
    coords[2, 1] = np.nan
    with pytest.raises(ValueError, match="1 points have no finite"):
        points_blob(coords, _names(4))


def test_sent_map_groups_rows_by_legend_entry() -> None:
    sent = SentMap(
        name="m",
        coords=np.zeros((4, 2), np.float32),
        names=["a", "b", "c", "d"],
        colours={"entries": [{"name": "x"}, {"name": "y"}]},
        codes=np.array([0, 1, 1, 2]),
        entry_of=np.array([1, 0, 1]),
        values=None,
    )
    assert [rows.tolist() for rows in sent.entry_rows()] == [[1, 2], [0, 3]]
