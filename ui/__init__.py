"""RepLens's Streamlit UI helpers: what the pages share (state keys, cached resources, pickers,
gallery, progress, error display). Engine logic lives in ``core``; nothing here does SQL.

Importing this package runs the routing guard once per process, so a page opened directly by URL
on a fresh server is sent through ``app.py``'s router (every page imports ``ui``).
"""

from ui.state import route_through_app

route_through_app()
