"""Errors a user can fix, shown as messages instead of tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

from core import config
from core.errors import RepLensError
from core.fsutil import storage_error
from ui.text import md_escape


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a RepLensError as st.error, in the page's terms (``for_page``), instead of a traceback.

    A write the database library could not finish for want of disk space or write access (DuckDB
    words it, it raises no OSError) is shown the same way, as ``StorageFullError`` /
    ``StorageNotWritableError``; DuckDB has rolled the change back. Any other error propagates.
    """
    try:
        yield
    except RepLensError as exc:
        show_error(exc)
    except Exception as exc:
        typed = storage_error(exc, config.db_path().parent, "this change")
        if typed is None:
            raise
        show_error(typed)


def show_error(exc: RepLensError, where: Any = None) -> None:
    """``exc`` in the page's terms on ``where`` (default the page). Messages quote names users gave
    (files, datasets, labels): the text is shown literally, never as Markdown."""
    (where if where is not None else st).error(md_escape(exc.for_page()), icon=":material/error:")
