"""Dataset names: checked once, here, for every way a name comes in (store, CLI, pages, stimuli).

A name is shown in tables, typed on the command line and turned into an upload folder
(``core.uploads.upload_dir``), so it may not look like a path.
"""

from __future__ import annotations

import unicodedata

from core.errors import InvalidInputError

MAX_DATASET_NAME = 200


def check_dataset_name(name: str) -> str:
    """``name`` without surrounding spaces, or InvalidInputError saying what to type instead.

    Refused: an empty name, one without a letter or digit, more than 200 characters, control
    characters, path separators (``/`` and ``\\``) and ``..``.
    """
    text = name.strip() if isinstance(name, str) else ""
    problem = None
    if not text:
        problem = "it is empty"
    elif not any(c.isalnum() for c in text):
        problem = "it has no letter or digit"
    elif len(text) > MAX_DATASET_NAME:
        problem = f"it has {len(text)} characters (at most {MAX_DATASET_NAME})"
    elif any(unicodedata.category(c) == "Cc" for c in text):
        problem = "it holds control characters (a line break or tab)"
    elif "/" in text or "\\" in text:
        problem = "it holds a path separator (/ or \\)"
    elif ".." in text:
        problem = "it holds '..'"
    if problem is not None:
        raise InvalidInputError(
            f"Dataset name {name!r} is not usable: {problem}. "
            f"Give a name with at least one letter or digit, at most {MAX_DATASET_NAME} characters, "
            "without / \\ or '..' (e.g. holiday-photos)."
        )
    return text
