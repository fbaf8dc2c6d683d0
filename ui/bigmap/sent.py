"""What a page run sent to its big maps, decoded: for AppTest-driven tests (no browser runs the JS).

``sent_maps(at)`` reads the map elements and their chunk elements from an ``AppTest`` run and
returns, per map, the coordinates, names, per-point category and legend the browser would draw.
``legend_traces(at)`` gives the same as one dict per legend entry (name with count, colour,
rows, x, y), the shape tests of the Plotly map read from its traces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ui.bigmap import recent_blob
from ui.bigmap.encoding import join, names_of, unpack


@dataclass(frozen=True)
class SentMap:
    name: str
    coords: np.ndarray  # (n, 2) float32
    names: list[str]  # one per point (hover text)
    colours: dict[str, Any]  # the colours blob's meta (title, mode, names, entries / min, max, scale)
    codes: np.ndarray | None  # category index per point (categories mode)
    entry_of: np.ndarray | None  # legend entry per category
    values: np.ndarray | None  # value per point (values mode)

    def entry_rows(self) -> list[np.ndarray]:
        """The rows of each legend entry (categories mode), in legend order."""
        assert self.codes is not None and self.entry_of is not None
        per_point = self.entry_of[self.codes]
        return [np.flatnonzero(per_point == e) for e in range(len(self.colours["entries"]))]


def _components(at: Any) -> list[Any]:
    return [element.proto for element in at.get("bidi_component")]


def sent_blobs(at: Any) -> dict[str, bytes]:
    """Every blob whose chunks this run sent, by content id."""
    chunks: dict[str, list[bytes]] = {}
    for proto in _components(at):
        if proto.component_name == "replens_bigmap_chunk":
            meta, _ = unpack(proto.bytes)
            chunks.setdefault(meta["id"], []).append(proto.bytes)
    return dict(join(parts) for parts in chunks.values())


def sent_maps(at: Any) -> list[SentMap]:
    """The big maps of an AppTest run, decoded (blobs an earlier run sent come from this process's
    recent ones, as the browser would hold them)."""
    blobs = sent_blobs(at)
    out = []
    for proto in _components(at):
        if proto.component_name != "replens_bigmap":
            continue
        args = json.loads(proto.json)
        for blob_id in (args["points"], args["colours"]):
            known = recent_blob(blob_id)
            if blob_id not in blobs and known is not None:  # sent by an earlier run of this session
                blobs[blob_id] = known.data
        if args["points"] not in blobs or args["colours"] not in blobs:
            continue
        _, points = unpack(blobs[args["points"]])
        meta, colours = unpack(blobs[args["colours"]])
        out.append(
            SentMap(
                name=args["name"],
                coords=points["xy"].reshape(-1, 2),
                names=names_of(points),
                colours=meta,
                codes=colours.get("codes"),
                entry_of=colours.get("entry_of"),
                values=colours.get("values"),
            )
        )
    return out


def legend_traces(at: Any) -> list[dict[str, Any]]:
    """One dict per legend entry of the run's only map: name "(count)", colour, rows, x, y."""
    maps = sent_maps(at)
    assert len(maps) == 1, f"expected one big map, found {len(maps)}"
    sent = maps[0]
    traces = []
    for entry, rows in zip(sent.colours["entries"], sent.entry_rows()):
        traces.append(
            {
                "name": f"{entry['name']} ({entry['count']:,})",
                "colour": entry["colour"],
                "rows": rows.tolist(),
                "x": sent.coords[rows, 0].tolist(),
                "y": sent.coords[rows, 1].tolist(),
            }
        )
    return traces
