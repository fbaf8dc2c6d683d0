"""RepLens dashboard: the router. Run with ``streamlit run app.py``.

Each page is one line in ``PAGES``; a page that is not built yet is simply not listed.
"""

from __future__ import annotations

import streamlit as st

from core.errors import RepLensError

# (script, title users see, icon, url path). The first entry is the home page.
PAGES: list[tuple[str, str, str, str]] = [
    ("pages/data.py", "Data", ":material/folder_open:", "data"),
    ("pages/map.py", "Map", ":material/scatter_plot:", "map"),
    ("pages/neighbors.py", "Neighbors", ":material/join_inner:", "neighbors"),
    ("pages/clusters.py", "Clusters", ":material/hub:", "clusters"),
    ("pages/bias.py", "Bias", ":material/balance:", "bias"),
    ("pages/snapshots.py", "Snapshots", ":material/photo_library:", "snapshots"),
    ("pages/diagnostics.py", "Diagnostics", ":material/monitoring:", "diagnostics"),
]


def link_page_index(query_params: object) -> int | None:
    """The PAGES index a shared link opens (?snapshot=<id> -> Snapshots), or None."""
    if "snapshot" not in query_params:  # type: ignore[operator]
        return None
    return next((i for i, (script, *_) in enumerate(PAGES) if script == "pages/snapshots.py"), None)


def main() -> None:
    st.set_page_config(page_title="RepLens", page_icon=":material/blur_on:", layout="wide")
    pages = [
        st.Page(script, title=title, icon=icon, url_path=url, default=(i == 0))
        for i, (script, title, icon, url) in enumerate(PAGES)
    ]
    current = st.navigation(pages, position="sidebar")
    target = link_page_index(st.query_params)
    if target is not None and current is not pages[target]:
        # A shared snapshot link lands on the Snapshots page whatever path it names.
        st.switch_page(pages[target], query_params=st.query_params.to_dict())
    try:
        current.run()
    except RepLensError as exc:
        # Whatever page it comes from, an error the user can fix (locked database, missing
        # embeddings…) is a message that says what to do, not a traceback.
        st.error(str(exc), icon=":material/error:")


main()
