"""User text (file names, captions, labels, dataset names, notes) put into Streamlit Markdown literally.

Everything Streamlit renders as Markdown (``st.markdown``, ``st.caption``, ``st.success`` & co.,
widget labels, help texts, spinner and image captions) would otherwise format a name such as
``*x*``, link ``[x](javascript:…)``, or set ``$…$`` as maths. :func:`md_escape` backslash-escapes
what starts Markdown, GitHub-flavoured Markdown or Streamlit's own syntax (``:red[…]``,
``:material/…:``), so the text renders as typed; :func:`md_code` is the same for text inside a code
span, where backslashes would show.

Two things escaping cannot stop, because Streamlit applies them to the text after parsing (checked in
Chromium by tests/test_escaping.py): GitHub's literal autolinks (``http://…``, ``www.…``, ``a@b.co``)
stay links whose target is exactly the text shown (never ``javascript:``), and emoji shortcodes
(``:smile:``) become emoji. Raw HTML is never rendered (pages do not allow it); it is escaped anyway.

The escaping is minimal on purpose: characters that start nothing in the middle of a line (``.``,
``-``, ``(``, ``'``, ``=``) are left alone there, so messages stay readable in their source too.
"""

from __future__ import annotations

import re

# Anywhere in a line: emphasis, code, links and images, raw HTML and <autolinks>, entities,
# strikethrough, tables, maths, Streamlit directives (:red[…], :material/…:) and headings.
_INLINE = re.compile(r"[\\`*\[\]<>&~|$:#]")
# "_" opens or closes emphasis only at a word boundary ("dino_vits16" is plain text).
_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# At the start of a line: block quotes, headings and lists, setext underlines, ordered lists.
_LINE_START = re.compile(r"^([ \t]*)([-+=])", re.MULTILINE)
_ORDERED = re.compile(r"^([ \t]*\d{1,9})([.)])", re.MULTILINE)
_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)  # four spaces would start a code block


def md_escape(text: object, *, line_breaks: bool = False) -> str:
    """``text`` (made a string) escaped so Streamlit's Markdown shows it exactly as typed.

    ``line_breaks``: keep each line break of a multi-line text (notes) as a break, where Markdown
    would join the lines.
    """
    escaped = _INLINE.sub(lambda m: "\\" + m.group(0), str(text))
    escaped = _UNDERSCORE.sub(r"\\_", escaped)
    escaped = _ORDERED.sub(r"\1\\\2", escaped)
    escaped = _LINE_START.sub(r"\1\\\2", escaped)
    escaped = _INDENT.sub(lambda m: "&#32;" * len(m.group(0).expandtabs(4)), escaped)
    return escaped.replace("\n", "  \n") if line_breaks else escaped


def md_code(text: object) -> str:
    """``text`` as an inline code span, whatever backticks it holds (a longer fence around it)."""
    body = " ".join(str(text).split("\n"))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    padded = f" {body} " if body.startswith("`") or body.endswith("`") or not body.strip() else body
    return f"{fence}{padded}{fence}"
