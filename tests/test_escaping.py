"""Issue 11: user text (file names, folder labels, dataset names, cluster labels, snapshot titles and
notes, uploaded file names) is shown as typed: never as Markdown on a page, never as HTML or script in
the snapshot HTML export.

Pages: ``ui.text.md_escape`` is the one helper; each AppTest below puts hostile names through a page
and checks the Markdown bodies it sends hold them escaped (``*``, ``_``, ``[x](javascript:…)``,
``<img onerror>``, ``$…$``, ``:red[…]``). The export is parsed with html.parser: no element or
script is injected, and its JSON reads back the exact original text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors
from streamlit.testing.v1 import AppTest

from conftest import png_bytes
from core import snapshots
from core.cluster import run_clustering
from core.datasets import ingest_path
from core.encoders import load_encoder
from core.extract import embed_dataset
from core.store import Store
from ui.gallery import gallery_html
from ui.text import md_code, md_escape

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "pages"
PIXELS_KEY = "pixels@v1/pixels/none"

HOSTILE = "*bold* _it_ [x](javascript:alert(1)) <img src=x onerror=alert(1)> $x$ :red[r] ~~s~~ `c` &amp; |t|"
LABEL = "</script><script>alert(1)</script><!-- *l* [x](javascript:y) &\u2028end"
TITLE = "</title><script>alert(2)</script> *t* 'q' \"dq\""
NOTES = (
    "<img src=x onerror=alert(3)>\n# heading\n- [x](javascript:alert(4))\n    code?\n"
    "</div></header><script>alert(5)</script>"
)
FOLDERS = ("[x](javascript:alert(1)) *lab*", "_under_ <b>old<b>")  # folder names hold no "/"
FILE = "<img src=x onerror=alert({i})> *f{i}* [l](javascript:x) $m$.png"

# CommonMark: a backslash before ASCII punctuation stands for that character.
_UNESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_ACTIVE = re.compile(r"(?<!\\)[*\[\]<>`~$|&:#]")


def rendered_text(markdown: str) -> str:
    """The text a CommonMark renderer shows for escaped text (escapes and &#32; undone)."""
    return _UNESCAPE.sub(r"\1", markdown.replace("&#32;", " "))


# --------------------------------------------------------------------------- the helper


@pytest.mark.parametrize(
    "text",
    [HOSTILE, LABEL, TITLE, NOTES, "1. first\n2) second\n+ plus\n= under\n> quote", "http://x.y :smile:"],
)
def test_md_escape_keeps_the_text_and_leaves_no_markup(text: str) -> None:
    escaped = md_escape(text)
    assert rendered_text(escaped) == text  # what is shown is exactly what was typed
    assert not _ACTIVE.search(escaped.replace("&#32;", ""))  # no unescaped character that starts markup
    for line in escaped.split("\n"):
        stripped = line.replace("&#32;", "")
        assert not re.match(r"[-+=>#]|\d+[.)]|\s{4}", stripped), line  # no list, heading, quote or code block


def test_md_escape_leaves_plain_names_readable() -> None:
    assert md_escape("dino_vits16.safetensors") == "dino_vits16.safetensors"
    assert md_escape("n_clusters=50, it's (ok) - 3.5") == "n_clusters=50, it's (ok) - 3.5"
    assert md_escape("a\nb", line_breaks=True) == "a  \nb"


def test_md_code_holds_any_backticks() -> None:
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x") == "`` `x ``"
    assert md_code("plain") == "`plain`"


# --------------------------------------------------------------------------- HTML made by RepLens


class Elements(HTMLParser):
    """Every element of a page, with its attributes, and the text inside each <script> and <title>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.texts: dict[str, list[str]] = {}
        self._open: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in {"meta", "img"}:
            self._open.append((tag, dict(attrs)))
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if not self._open:
            return
        tag, attrs = self._open[-1]
        if tag == "script":
            self.scripts[-1] += data
        name = attrs.get("id") or attrs.get("class") or tag
        self.texts.setdefault(str(name), []).append(data)


def test_gallery_captions_are_text_not_html() -> None:
    tiles = [(str(ROOT / "tests" / "conftest.py"), caption) for caption in (HOSTILE, LABEL)]
    parsed = Elements()
    parsed.feed(gallery_html(tiles))
    assert [t for t, _ in parsed.tags] == ["style", "div", "figure", "img", "figcaption", "figure", "img", "figcaption"]
    assert all(not name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    assert parsed.texts["figcaption"] == [HOSTILE, LABEL]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Dataset HOSTILE: 6 images with hostile file and folder names, pixel vectors, a k-means run
    whose cluster 0 is called LABEL, and a snapshot of it titled TITLE with NOTES."""
    base = tmp_path_factory.mktemp("escaping")
    for f, folder in enumerate(FOLDERS):
        for i in range(3):
            path = base / "images" / folder / FILE.format(i=3 * f + i)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(40 + 3 * f + i, 16))
    store = Store(base / "replens.duckdb", base / "cache")
    try:
        ingest_path(store, HOSTILE, base / "images")
        embed_dataset(store, HOSTILE, load_encoder("pixels", "cpu"), workers=1)
        run = run_clustering(store, HOSTILE, PIXELS_KEY, "kmeans", {"n_clusters": 2, "reduce": None})
        store.set_cluster_label(run.run_id, 0, LABEL)
        sid = snapshots.save_snapshot(store, run.run_id, title=TITLE, notes=NOTES)
        page = snapshots.snapshot_html(store, sid, base / "snapshot.html").read_text(encoding="utf-8")
        snap = snapshots.load_snapshot(store, sid)
        paths = store.dataset_paths(HOSTILE)["rel_path"].tolist()
    finally:
        store.close()
    return {
        "db": base / "replens.duckdb",
        "cache": base / "cache",
        "run": run.run_id,
        "sid": sid,
        "page": page,
        "snap": snap,
        "paths": paths,
    }


def test_the_snapshot_html_injects_nothing_and_its_json_round_trips(world: dict[str, object]) -> None:
    page, snap = str(world["page"]), world["snap"]
    assert isinstance(snap, snapshots.Snapshot)
    parsed = Elements()
    parsed.feed(page)
    # Exactly the template's elements: three scripts (data, plotly, the page's), one <img> (the hover panel).
    assert len(parsed.scripts) == 3
    assert [attrs.get("id") for tag, attrs in parsed.tags if tag == "img"] == ["hover-img"]
    assert all(not name.startswith("on") for _, attrs in parsed.tags for name in attrs), "event handler injected"
    template_tags = {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "header",
        "h1",
        "p",
        "div",
        "main",
        "aside",
        "img",
        "section",
        "h2",
        "ol",
        "li",
        "details",
        "summary",
        "span",
        "script",
    }
    assert {tag for tag, _ in parsed.tags} <= template_tags
    # Text nodes hold the exact text.
    assert parsed.texts["title"] == [f"{TITLE} · RepLens snapshot"]
    assert parsed.texts["notes"] == [NOTES]
    assert LABEL in parsed.texts["cluster-label"]
    # The JSON block reads back exactly what was stored, and contains no "<" that could end it.
    data_script = parsed.scripts[0]
    assert "<" not in data_script
    payload = json.loads(data_script)
    assert payload["labels"]["0"] == LABEL
    assert payload["paths"] == snap.points["rel_path"].tolist()
    assert sorted(payload["paths"]) == sorted(world["paths"])  # type: ignore[arg-type]
    assert {p.split("/")[0] for p in payload["paths"]} == set(FOLDERS)
    # The two code scripts are the ones the CSP allows by hash (an injected one would not run anyway).
    csp = next(attrs["content"] for tag, attrs in parsed.tags if tag == "meta" and attrs.get("http-equiv"))
    for script in parsed.scripts[1:]:
        digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
        assert f"'sha256-{digest}'" in str(csp)


# --------------------------------------------------------------------------- pages


def literal(body: str, text: str) -> bool:
    """``text`` is in a Markdown body escaped, and nowhere raw."""
    return md_escape(text) in body and text not in body


@pytest.fixture
def on_world(world: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setenv("REPLENS_DB", str(world["db"]))
    monkeypatch.setenv("REPLENS_CACHE", str(world["cache"]))
    return world


def run_page(name: str, **state: object) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_the_data_page_shows_a_hostile_dataset_name_literally(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    for i in range(3):
        (tmp_path / "a" / "cats").mkdir(parents=True, exist_ok=True)
        (tmp_path / "a" / "cats" / f"c{i}.png").write_bytes(png_bytes(i, 16))
        (tmp_path / "b" / "dogs").mkdir(parents=True, exist_ok=True)
        (tmp_path / "b" / "dogs" / f"d{i}.png").write_bytes(png_bytes(10 + i, 16))
    at = run_page("data.py")
    at.text_input(key="server_path").set_value(str(tmp_path / "a")).run()
    at.text_input(key="server_path_name").set_value(HOSTILE).run()
    at.button(key="add_path").click().run()
    assert literal(at.success[0].value, HOSTILE), at.success[0].value  # "**NAME**: 3 added …"
    assert at.success[0].value.startswith(f"**{md_escape(HOSTILE)}**: 3 added")
    assert literal(at.checkbox(key=f"confirm_delete_{HOSTILE}").label, HOSTILE)
    # The same name for another folder: the error quotes it, escaped.
    at.text_input(key="server_path").set_value(str(tmp_path / "b")).run()
    assert literal(at.checkbox(key="server_path_add").label, HOSTILE)  # "Add to the existing dataset **NAME**"
    at.button(key="add_path").click().run()
    assert len(at.error) == 1 and "already" in at.error[0].value and literal(at.error[0].value, HOSTILE)
    renamed = "new [y](javascript:z) *n*"
    at.text_input(key=f"rename_to_{HOSTILE}").set_value(renamed).run()
    at.button(key="rename_dataset").click().run()
    flash = at.success[0].value
    assert flash == f"Renamed **{md_escape(HOSTILE)}** to **{md_escape(renamed)}**."


def test_an_uploaded_weights_file_name_is_shown_literally(tmp_path: Path, on_world: dict[str, object]) -> None:
    name = "[w](javascript:alert(1)) *x* <img src=x onerror=y>.safetensors"
    at = run_page("data.py")
    at.selectbox(key="encoder_id").set_value("dino-vits16").run()
    tensors = save_safetensors({"w": np.zeros(2, dtype=np.float32)})
    at.file_uploader(key="weights_upload_dino-vits16_0").set_value((name, tensors, "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    captions = [c.value for c in at.caption if "Using the weights file" in c.value]
    assert len(captions) == 1 and literal(captions[0], name)


def test_the_neighbors_page_shows_a_hostile_file_name_literally(on_world: dict[str, object]) -> None:
    store = Store(Path(str(on_world["db"])), Path(str(on_world["cache"])))
    try:
        frame = store.dataset_paths(HOSTILE)
    finally:
        store.close()
    row = frame.iloc[0]
    at = run_page("neighbors.py", rl_query_hash=row["content_hash"])
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    query = [c for c in captions if c.startswith("Query: ")]
    assert query == [f"Query: {md_escape(row['rel_path'])}"] and literal(query[0], row["rel_path"])


def test_the_clusters_page_shows_a_hostile_cluster_name_literally(on_world: dict[str, object]) -> None:
    at = run_page("clusters.py", cl_layout="PCA", rl_cluster_run=on_world["run"])
    hostile = "<img src=x onerror=alert(9)> [y](javascript:z) _u_"
    at.text_input(key="cl_rename").set_value(hostile).run()
    at.button(key="cl_rename_go").click().run()
    assert not at.exception, [e.message for e in at.exception]
    flashes = [s.value for s in at.success if "is now called" in s.value]
    assert len(flashes) == 1 and literal(flashes[0], hostile)
    store = Store(Path(str(on_world["db"])), Path(str(on_world["cache"])))
    try:  # put the shared world back: the snapshot test reads LABEL
        picked = int(at.selectbox(key="cl_cluster").value)
        store.set_cluster_label(str(on_world["run"]), picked, LABEL if picked == 0 else f"cluster {picked}")
    finally:
        store.close()


def test_the_snapshots_page_shows_a_hostile_title_and_notes_literally(on_world: dict[str, object]) -> None:
    at = AppTest.from_file(str(PAGES / "snapshots.py"), default_timeout=60)
    at.query_params["snapshot"] = str(on_world["sid"])
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert [h.value for h in at.header] == [md_escape(TITLE)]
    notes = [m.value for m in at.markdown if "heading" in m.value]
    assert notes == [md_escape(NOTES, line_breaks=True)]
    assert rendered_text(notes[0].replace("  \n", "\n")) == NOTES
    facts = next(m.value for m in at.markdown if m.value.startswith("- **Dataset:**"))
    assert literal(facts, HOSTILE)
    tiles = [img.caption for element in at.get("image") for img in element.proto.imgs]
    # Shortened file names ("<img src=x…$.png"), every markup character escaped.
    assert tiles and all(not _ACTIVE.search(c) and rendered_text(c).startswith("<img src=x") for c in tiles)


# --------------------------------------------------------------------------- Streamlit's own renderer

BROWSER_TEXTS = [HOSTILE, LABEL, TITLE, FOLDERS[0], "1. one + two - three # four > five"]
FORBIDDEN = "a, img, em, strong, code, del, s, h1, h2, h3, ul, ol, li, blockquote, pre, .katex, span[style]"
AUTOLINKED = "see www.example.com, http://x.y/p and a@b.co"  # Streamlit links these after parsing


def _render_script(path: Path) -> Path:
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import streamlit as st\n"
        "from ui.text import md_escape\n"
        f"texts = {BROWSER_TEXTS!r}\n"
        "for i, text in enumerate(texts):\n"
        "    with st.container(key=f'md{i}'):\n"
        "        st.markdown(md_escape(text))\n"
        "    with st.container(key=f'cap{i}'):\n"
        "        st.caption(f'**{md_escape(text)}**')\n"
        "    with st.container(key=f'ok{i}'):\n"
        "        st.success(md_escape(text))\n"
        "with st.container(key='notes'):\n"
        f"    st.markdown(md_escape({NOTES!r}, line_breaks=True))\n"
        "with st.container(key='links'):\n"
        f"    st.markdown(md_escape({AUTOLINKED!r}))\n",
        encoding="utf-8",
    )
    return path


def _words(text: str) -> str:
    return " ".join(text.split())


def test_streamlit_renders_escaped_text_literally_in_a_real_browser(tmp_path: Path) -> None:
    """What AppTest cannot see: Streamlit's Markdown renderer in Chromium shows md_escape's output as
    the original text, with no link, image, emphasis, code, heading, list, maths or colour element."""
    from browser import browser_page, settle, streamlit_server

    script = _render_script(tmp_path / "render.py")
    with streamlit_server(tmp_path / "db.duckdb", tmp_path / "cache", tmp_path / "server.log", str(script)) as url:
        with browser_page() as page:
            page.goto(url)  # type: ignore[attr-defined]
            page.wait_for_selector(".st-key-links [data-testid='stMarkdownContainer']")  # type: ignore[attr-defined]
            settle(page)

            def box(key: str) -> object:
                return page.locator(f".st-key-{key}").first  # type: ignore[attr-defined]

            problems = []
            for i, text in enumerate(BROWSER_TEXTS):
                for kind in ("md", "cap", "ok"):
                    shown = box(f"{kind}{i}")
                    # The caption is wrapped in **…** by the script, as pages do: one <strong>, the whole text.
                    forbidden = FORBIDDEN.replace(" strong,", "") if kind == "cap" else FORBIDDEN
                    ours = shown.locator("strong").all_inner_texts() if kind == "cap" else []  # type: ignore[attr-defined]
                    wrong_bold = kind == "cap" and [_words(t) for t in ours] != [_words(text)]
                    if _words(shown.inner_text()) != _words(text) or shown.locator(forbidden).count() or wrong_bold:  # type: ignore[attr-defined]
                        problems.append((kind, text, shown.inner_html()))  # type: ignore[attr-defined]
            assert problems == []
            notes = box("notes")
            assert [_words(line) for line in notes.inner_text().split("\n")] == [
                _words(line) for line in NOTES.split("\n")
            ]  # type: ignore[attr-defined]
            assert notes.locator(FORBIDDEN).count() == 0  # type: ignore[attr-defined]
            # Literal autolinks stay links, but only to exactly what they show.
            links = box("links")
            assert _words(links.inner_text()) == AUTOLINKED  # type: ignore[attr-defined]
            hrefs = links.locator("a").evaluate_all("els => els.map(a => [a.getAttribute('href'), a.innerText])")  # type: ignore[attr-defined]
            assert hrefs == [
                ["http://www.example.com", "www.example.com"],
                ["http://x.y/p", "http://x.y/p"],
                ["mailto:a@b.co", "a@b.co"],
            ]
