"""Session-state keys and page paths every page shares, and the routing guard."""

from __future__ import annotations

import streamlit as st

PAGE_DATA = "pages/data.py"
PAGE_MAP = "pages/map.py"
PAGE_NEIGHBORS = "pages/neighbors.py"
PAGE_SNAPSHOTS = "pages/snapshots.py"

# Shared between pages (plain keys, not widget keys, so they survive page switches).
DATASET_KEY = "rl_dataset"
ENCODER_KEY = "rl_encoder_key"
QUERY_KEY = "rl_query_hash"
SELECTION_KEY = "rl_selection_hashes"  # content hashes of the last Map selection
CLUSTER_RUN_KEY = "rl_cluster_run"  # the cluster run picked on the Clusters page
SELECTION_DATASET_KEY = "rl_selection_dataset"  # the dataset that selection belongs to


def route_through_app() -> None:
    """Send a direct page visit through app.py's router.

    Because a ``pages/`` folder exists, a server whose *first* request names a page URL
    (``/bias``, ``/snapshots?snapshot=…`` from a shared link) runs that page file on its own,
    in Streamlit's old folder-based multipage mode: wrong sidebar, no router. Leaving that
    mode and rerunning makes Streamlit run app.py, whose ``st.navigation`` resolves the same
    URL. (st.navigation flips this same flag once app.py has run.)
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
