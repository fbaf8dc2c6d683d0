"""The Neighbors page's approximate index at scale: built once, on the server, as a job.

Below ``core.neighbors.ANN_THRESHOLD`` vectors a search is exact and needs no index. Above, the
first search would wait for an HNSW build (about five minutes at a million vectors on 2 cores):
the page starts that build as a job instead (it outlives the tab and shows its progress), and
searches once the index is on disk. Later opens, and updates for images added since, take
seconds.
"""

from __future__ import annotations

from core import neighbors
from ui.jobs import await_job, unwatch
from ui.resources import DatasetView
from ui.text import md_escape


def neighbor_index_ready(view: DatasetView, key: str, n_vectors: int, *, panel: str) -> bool:
    """True when a search under ``key`` can run now; else the index job is started (or joined) and
    its progress shown under panel ``panel``, and the page reruns when it ends."""
    store = view.store
    if n_vectors < neighbors.ANN_THRESHOLD or neighbors.cached_index_exists(store.cache_dir, key, view.dataset):
        unwatch(panel)
        return True
    await_job(
        view.dataset,
        "index",
        {"encoder_key": key},
        f"Searching **{n_vectors:,} vectors** of {md_escape(view.dataset)} needs an approximate-neighbour index. "
        "It is built once, on the server, as a job (a few minutes at a million vectors): it goes on if you leave "
        "this page or close the tab, then stays on disk and is updated as images are added. Searches then take "
        "milliseconds, and every similarity shown is an exact cosine.",
        key=panel,
    )
    return False
