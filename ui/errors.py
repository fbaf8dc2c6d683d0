"""Errors a user can fix, shown as messages instead of tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from core.errors import RepLensError


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a RepLensError as st.error, in the page's terms (``for_page``), instead of a traceback."""
    try:
        yield
    except RepLensError as exc:
        st.error(exc.for_page(), icon=":material/error:")
