"""The newcomer's path, end to end, in a real browser (issue 10, "Done when").

One Streamlit server on an empty RepLens, one Chromium page, the way a new user goes:
upload a folder on Data → extract (the instant, offline "pixels" encoder) → Map (click one
point, box-select a group, its gallery) → Clusters (k-means) → text labels → save a snapshot →
open the snapshot's link in a fresh browser context → Bias battery from folders → Diagnostics.

What the pages show is checked against independent computations: counts from the generated
files, embeddings computed here from the files with the same encoder (iEAT d and p with
``core.bias.association_test``, RankMe with ``core.diagnostics.rankme``), and the server's
own database (a copy: DuckDB lets no second process open a file that one holds for writing)
for the cluster run, its labels and the snapshot. Screenshots of every step go to
``test-output/walkthrough/``.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core import bias, cluster, diagnostics, snapshots
from core.encoders import load_encoder
from core.images import decode_rgb
from core.store import Store
from tests.browser import browser_page, copy_of_database, grid_rows, settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "walkthrough"
TIMEOUT_MS = 90_000
DATASET = "walk"
PIXELS_KEY = "pixels@v1/pixels/none"
K = 4
SNAPSHOT_TITLE = "Walk-through colours"
# Folder path -> (images, base colour). Decoys for exact folder sets: `misc/warm` is another
# folder called warm (never part of the set `warm`), `warm/pale` and `cool/deep` are sub-folders.
FOLDERS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "reds": (6, (200, 40, 50)),
    "blues": (6, (50, 60, 200)),
    "warm": (5, (230, 120, 30)),
    "warm/pale": (3, (240, 180, 120)),
    "cool": (5, (40, 160, 200)),
    "cool/deep": (2, (20, 40, 120)),
    "misc/warm": (3, (230, 110, 40)),
    "greens": (5, (40, 170, 60)),
}
N_IMAGES = sum(n for n, _ in FOLDERS.values())
# The battery's one test: role -> (label on the page, folder, with sub-folders).
ROLES = {
    "x": ("Target X", "reds", True),
    "y": ("Target Y", "blues", True),
    "a": ("Attribute A", "warm", True),  # warm/ and warm/pale/, not misc/warm/
    "b": ("Attribute B", "cool", False),  # cool/ only, not cool/deep/
}

DRAWN_JS = "() => document.querySelector('.js-plotly-plot')._fullData.reduce((n, t) => n + t._length, 0)"
# The Map's big map: each point's page position (the pixel it is drawn on) and frame row.
BIG_MAP = "window.__replensBigmap?.maps.get('map_chart')"
BIG_MAP_READY_JS = f"(n) => {{ const m = {BIG_MAP}; return !!m && m.stats.ready && m.stats.n === n; }}"
BIG_MAP_POINTS_JS = f"""() => {{
  const m = {BIG_MAP};
  const box = m.el.overlay.getBoundingClientRect();
  const out = [];
  for (let i = 0; i < m.stats.n; i++) {{ const p = m.pagePoint(i); out.push({{px: p.x, py: p.y, row: i}}); }}
  return {{points: out, box: {{x: box.left, y: box.top, width: box.width, height: box.height}}}};
}}"""
GALLERY_JS = "() => [...document.querySelectorAll('.rl-gallery figcaption')].map(f => f.innerText)"


def _make_folder(root: Path) -> dict[str, bytes]:
    """The generated folder: rel_path -> PNG bytes (every image distinct), a caption beside each."""
    rng = np.random.default_rng(10)
    written: dict[str, bytes] = {}
    for folder, (n, colour) in FOLDERS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        stem = folder.replace("/", "_")
        for i in range(n):
            img = Image.new("RGB", (48, 48), tuple(int(v) for v in rng.integers(215, 256, 3)))
            fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, rng.integers(-20, 21, 3)))
            draw = ImageDraw.Draw(img)
            (draw.ellipse if i % 2 else draw.rectangle)([6 + i % 4, 6 + i % 3, 42 - i % 5, 42], fill=fill)
            rel = f"{folder}/{stem}_{i}.png"
            img.save(root / rel)
            (root / rel).with_suffix(".txt").write_text(f"a {stem} shape, number {i}")
            written[rel] = (root / rel).read_bytes()
    return written


def _in_folder(paths: list[str], folder: str, subfolders: bool) -> list[str]:
    """Paths in exactly the folder path ``folder`` (and below it with ``subfolders``), from the files."""
    inside = [p for p in paths if p.startswith(folder + "/")]
    return sorted(p for p in inside if subfolders or "/" not in p[len(folder) + 1 :])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    base = tmp_path_factory.mktemp("walkthrough")
    files = _make_folder(base / "colours")
    encoder = load_encoder("pixels", "cpu")
    paths = sorted(files)
    vectors = encoder.embed_batch(np.stack([encoder.preprocess(decode_rgb(files[p])) for p in paths]))
    db = base / "db" / "replens.duckdb"
    with streamlit_server(db, base / "cache", base / "server.log") as url:
        yield {
            "url": url,
            "base": base,
            "db": db,
            "folder": base / "colours",
            "paths": paths,
            "vectors": dict(zip(paths, np.asarray(vectors, dtype=np.float64))),
        }


def server_store(world: dict[str, object], name: str) -> Store:
    """A Store on a copy of the server's database as it is now (call once the page has settled)."""
    base = Path(str(world["base"]))
    copy = copy_of_database(Path(str(world["db"])), base / "copies" / f"{name}.duckdb")
    return Store(copy, base / "copies" / f"{name}-cache")


def shot(page: object, name: str, at: object | None = None) -> Path:
    """Screenshot the window (Streamlit scrolls its main area itself: ``at`` is scrolled into view)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    if at is not None:
        at.scroll_into_view_if_needed()  # type: ignore[attr-defined]
    page.mouse.move(0, 0)  # no hover tooltip over the picture, nor a focused button's
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=True)
    return path


def choose(page: object, label: str, typed: str, option: str | re.Pattern[str]) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` after typing ``typed`` into it."""
    combo = page.get_by_role("combobox", name=label).first
    combo.click()
    combo.fill(typed)  # filters the (virtualised) list down to the wanted entry
    page.get_by_role("option", name=option).first.click()
    settle(page)


def metric(page: object, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has=page.get_by_text(label, exact=True)).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def grid_with(page: object, header: str) -> list[dict[str, str]]:
    """Rows of the first data grid on the page that has a column headed ``header``."""
    grids = page.locator('[data-testid="stDataFrame"]')
    for i in range(grids.count()):
        rows = grid_rows(grids.nth(i))
        if rows and header in rows[0]:
            return rows
    raise AssertionError(f"no table with a column {header!r}")


class Walk:
    """The walk-through's state: the browser page, the server, the files, and what went wrong on the
    way without stopping the walk (asserted at the end, so that one page's slip still lets every
    later step be checked)."""

    def __init__(self, page: object, world: dict[str, object]) -> None:
        self.page = page
        self.url = str(world["url"])
        self.world = world
        self.folder = Path(str(world["folder"]))
        self.paths: list[str] = list(world["paths"])  # type: ignore[call-overload]
        self.vectors: dict[str, np.ndarray] = world["vectors"]  # type: ignore[assignment]
        self.problems: list[str] = []
        self.frame_paths: list[str] = []
        self.hashes: list[str] = []
        self.run_id = ""

    def caption_of(self, path: str) -> str:
        return (self.folder / path).with_suffix(".txt").read_text()

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    # -- Data: upload the folder through the webkitdirectory input, then extract --------------
    def data(self) -> None:
        page = self.page
        page.goto(self.url)
        page.get_by_role("heading", name="Data").wait_for()
        settle(page)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(self.folder))
        page.wait_for_function(
            "() => [...document.querySelectorAll('button')]"
            ".some(b => b.innerText.trim() === 'Add folder' && !b.disabled)"
        )
        settle(page)
        page.get_by_role("textbox", name="Dataset name").first.fill(DATASET)
        page.keyboard.press("Enter")
        settle(page)
        page.get_by_role("button", name="Add folder").click()
        page.get_by_text(f"{DATASET}: {N_IMAGES} added").wait_for()
        settle(page)
        assert metric(page, "Images") == str(N_IMAGES) == str(len(self.paths))
        assert metric(page, "Skipped") == "0"
        choose(page, "Encoder", "Pixels", re.compile("^Pixels baseline"))
        page.get_by_role("button", name="Extract").click()
        page.get_by_text(f"{N_IMAGES} embedded").wait_for()
        settle(page)
        overview = grid_with(page, "Dataset")
        assert [(r["Dataset"], r["Images"]) for r in overview] == [(DATASET, str(N_IMAGES))]
        assert metric(page, "Encoders embedded") == "1"
        shot(page, "1-data")
        store = server_store(self.world, "after-extract")
        try:
            frame, stored = store.load_embeddings(DATASET, PIXELS_KEY)
            info = store.list_datasets().set_index("dataset").loc[DATASET]
        finally:
            store.close()
        assert int(info["n_images"]) == N_IMAGES and int(info["n_skipped"]) == 0
        assert sorted(frame["rel_path"]) == self.paths
        self.frame_paths = frame["rel_path"].tolist()
        self.hashes = frame["content_hash"].tolist()
        # The server embedded the uploaded bytes as this test did from the files; captions came along.
        for path, vector in zip(self.frame_paths, stored):
            np.testing.assert_allclose(vector, self.vectors[path], atol=1e-5)
        assert set(frame["caption"]) == {self.caption_of(p) for p in self.paths}

    # -- Map: every point drawn; click one point, then box-select a group ---------------------
    def map(self) -> None:
        page = self.page
        page.get_by_role("link", name="Map").click()
        page.get_by_text(f"{N_IMAGES} points").wait_for()
        page.wait_for_function(BIG_MAP_READY_JS, arg=N_IMAGES)
        settle(page)
        assert page.evaluate(f"() => {BIG_MAP}.stats.drawn") == N_IMAGES
        drawn = page.evaluate(BIG_MAP_POINTS_JS)
        point = drawn["points"][len(drawn["points"]) // 2]
        page.mouse.move(point["px"], point["py"])
        page.wait_for_timeout(200)
        page.mouse.click(point["px"], point["py"])
        settle(page)
        page.get_by_text("Selection · 1 images").wait_for(timeout=20_000)
        clicked = self.frame_paths[int(point["row"])]
        shown = page.locator('[data-testid="stMarkdownContainer"] strong').filter(has_text=".png").first
        assert shown.inner_text() == clicked
        page.get_by_text(f"folder: {clicked.rsplit('/', 1)[0]}").first.wait_for()
        page.get_by_text(f"“{self.caption_of(clicked)}”").wait_for()
        page.locator('[data-testid="stImage"] img').first.wait_for()
        shot(page, "2-map-click")

        # The box's right edge lies halfway across the widest gap between neighbouring points
        # (in the middle third), so no point sits on it.
        box = drawn["box"]
        xs = sorted(p["px"] for p in drawn["points"])
        _, split = max((xs[i + 1] - xs[i], i) for i in range(len(xs) // 3, 2 * len(xs) // 3))
        right = (xs[split] + xs[split + 1]) / 2
        inside = [p for p in drawn["points"] if p["px"] < right]
        assert 3 <= len(inside) < N_IMAGES
        page.locator('button[data-mode="box"]').click()
        page.mouse.move(box["x"] + 3, box["y"] + 3)
        page.mouse.down()
        page.mouse.move((box["x"] + right) / 2, box["y"] + box["height"] / 2, steps=6)
        page.mouse.move(right, box["y"] + box["height"] - 3, steps=6)
        page.mouse.up()
        page.get_by_text(f"Selection · {len(inside)} images").wait_for()
        settle(page)
        page.wait_for_function(f"() => document.querySelectorAll('.rl-gallery figcaption').length >= {len(inside)}")
        captions = page.evaluate(GALLERY_JS)
        assert sorted(captions) == sorted(self.frame_paths[int(p["row"])].rsplit("/", 1)[-1] for p in inside)
        shot(page, "3-map-box")

    # -- Clusters: k-means with a fixed k, text labels ----------------------------------------
    def clusters(self) -> None:
        page = self.page
        page.get_by_role("link", name="Clusters").click()
        page.get_by_role("heading", name="Clusters").wait_for()
        settle(page)
        choose(page, "Method", "k-means", "k-means")
        page.get_by_text("Fixed k", exact=True).click()
        settle(page)
        k_input = page.get_by_role("spinbutton", name="k", exact=True)
        k_input.fill(str(K))
        k_input.press("Enter")
        settle(page)
        page.get_by_role("button", name="Cluster", exact=True).click()
        page.get_by_text("clusters in").first.wait_for()
        settle(page)
        assert metric(page, "Clusters") == str(K)
        store = server_store(self.world, "after-cluster")
        try:
            runs = cluster.list_runs(store, DATASET)
            assert len(runs) == 1
            run = cluster.load_run(store, str(runs["run_id"].iloc[0]))
        finally:
            store.close()
        self.run_id = run.run_id
        assert run.method == "kmeans" and run.n_clusters == K == len(set(run.labels.tolist()))
        assert sorted(run.hashes) == sorted(self.hashes)
        sizes = {int(c): int((run.labels == c).sum()) for c in set(run.labels.tolist())}
        table = grid_with(page, "cohesion")
        assert {int(r["cluster"]): int(r["size"]) for r in table} == sizes
        shot(page, "4-clusters")

        page.get_by_role("tab", name="Concepts").click()
        settle(page)
        page.get_by_role("button", name="Text labels").click()
        page.get_by_text(f"text labels for {K} cluster(s)").wait_for()
        settle(page)
        store = server_store(self.world, "after-labels")
        try:
            labels = store.load_cluster_labels(run.run_id)
        finally:
            store.close()
        names = {int(c): str(label) for c, label in zip(labels["cluster"], labels["label"])}
        assert sorted(names) == sorted(sizes) and all(names.values())
        assert len(set(names.values())) == K  # unique within the run (item 6)
        legend = (
            page.locator(".js-plotly-plot")
            .first.locator(".legendtext")
            .evaluate_all("els => els.map(e => e.textContent)")
        )
        assert sorted(legend) == sorted(f"{c} · {name} ({sizes[c]})" for c, name in names.items())
        shot(page, "5-labels")
        self.check(
            selected_tab(page) == "Concepts",
            f"after Text labels the Clusters page shows the {selected_tab(page)!r} tab",
        )

    # -- Save snapshot, open its link in a fresh browser context ------------------------------
    def snapshot(self) -> None:
        page = self.page
        page.get_by_role("tab", name="Save snapshot").click()
        settle(page)
        page.get_by_role("textbox", name="Title").fill(SNAPSHOT_TITLE)
        page.keyboard.press("Tab")
        settle(page)
        if selected_tab(page) != "Save snapshot":
            self.problems.append(
                f"Clusters: typing the snapshot title (a rerun) switched the tabs to {selected_tab(page)!r}: "
                "the tabs start over whenever the flash message above them appears or goes (here the "
                "'text labels' message went), so the user is not kept where they were (item 6; "
                "screenshot 6-snapshot-title-jump.png)"
            )
            shot(page, "6-snapshot-title-jump")
            page.get_by_role("tab", name="Save snapshot").click()
            settle(page)
        assert page.get_by_role("textbox", name="Title").input_value() == SNAPSHOT_TITLE
        page.get_by_role("button", name="Save snapshot").click()
        page.get_by_text("Snapshot saved:").wait_for()
        settle(page)
        href = page.get_by_role("link", name="Open on the Snapshots page").get_attribute("href") or ""
        shot(page, "6-snapshot-saved", page.get_by_text("Snapshot saved:"))
        store = server_store(self.world, "after-snapshot")
        try:
            listing = snapshots.list_snapshots(store)
            assert len(listing) == 1
            sid = str(listing["snapshot_id"].iloc[0])
            snap = snapshots.load_snapshot(store, sid)
        finally:
            store.close()
        assert snap.title == SNAPSHOT_TITLE and snap.n_points == N_IMAGES
        assert snap.clustering["n_clusters"] == K
        assert f"snapshot={sid}" in href, href
        page.get_by_text(sid).first.wait_for()  # the saved id is on the page
        fresh = page.context.browser.new_context(viewport={"width": 1400, "height": 1600})
        try:
            fresh.set_default_timeout(TIMEOUT_MS)
            other = fresh.new_page()
            other.goto(href if href.startswith("http") else f"{self.url}/{href.lstrip('/')}")
            other.get_by_role("heading", name=SNAPSHOT_TITLE).wait_for()
            settle(other)
            other.locator(".js-plotly-plot").first.wait_for()
            assert other.evaluate(DRAWN_JS) == N_IMAGES
            other.get_by_text(f"{N_IMAGES} points").first.wait_for()
            assert other.get_by_text("Read-only snapshot").count() == 1
            other.get_by_text(f"{DATASET} · {N_IMAGES} images").wait_for()
            other.get_by_text(f"kmeans · {K} clusters").first.wait_for()
            code = other.locator('[data-testid="stCode"]').filter(has_text=f"/?snapshot={sid}").first
            code.wait_for(state="visible")
            assert code.inner_text().strip() == f"{self.url}/?snapshot={sid}"
            shot(other, "7-snapshot-link")
        finally:
            fresh.close()

    # -- Bias: a battery from folders -----------------------------------------------------------
    def bias(self) -> None:
        page = self.page
        page.get_by_role("link", name="Bias").click()
        page.get_by_role("heading", name="1 · Build the battery").wait_for()
        settle(page)
        expected = {role: _in_folder(self.paths, f, sub) for role, (_, f, sub) in ROLES.items()}
        assert [len(expected[r]) for r in ROLES] == [6, 6, 8, 5]  # not 11 for warm (misc/warm), 7 for cool
        # X = Y is refused, with a message, and adds nothing.
        choose(page, "Target X", "reds", re.compile(r"^reds \("))
        choose(page, "Target Y", "reds", re.compile(r"^reds \("))
        page.get_by_role("button", name="Add test to battery").click()
        page.get_by_text(f"are the same {len(expected['x'])} image(s)").wait_for()
        settle(page)
        shot(page, "8-bias-refused")
        wanted = {
            role: f"{len(expected[role])} images: folder {folder_path} "
            + ("(with sub-folders)" if subfolders else "(this folder only, no sub-folders)")
            for role, (_, folder_path, subfolders) in ROLES.items()
        }
        for role in ROLES:
            self.pick_set(role)
            assert role_caption(page, role) == wanted[role]
        # Naming the test reruns the page: every pick must stay as it was.
        page.get_by_role("textbox", name="Test name").fill("Colours")
        page.keyboard.press("Enter")
        settle(page)
        shown = {role: role_caption(page, role) for role in ROLES}
        if shown != wanted:
            self.problems.append(
                "Bias: after unticking 'with sub-folders' for B (cool), the next rerun (typing the test name) "
                f"reset a folder pick: the sets read {shown} instead of {wanted} "
                "(screenshot 8-bias-pick-reset.png)"
            )
            shot(page, "8-bias-pick-reset")
            for role in ROLES:
                if shown[role] != wanted[role]:
                    self.pick_set(role)
            assert {role: role_caption(page, role) for role in ROLES} == wanted
        page.get_by_role("button", name="Add test to battery").click()
        settle(page)
        battery = grid_with(page, "Target X")
        assert len(battery) == 1
        for role, (label, folder_path, _) in ROLES.items():
            cell = battery[0][label]
            assert cell.startswith(f"folder {folder_path} ") and cell.endswith(f"({len(expected[role])})"), cell
        page.get_by_role("button", name="Run battery").click()
        page.get_by_role("heading", name="3 · Results").wait_for()
        settle(page)
        shot(page, "9-bias-results", page.locator('[data-testid="stPlotlyChart"]').last)
        want = bias.association_test(
            *(np.stack([self.vectors[p] for p in expected[r]]) for r in ROLES),
            n_samples=bias.DEFAULT_N_SAMPLES,  # the page's "Permutations" default, and its seed 0
            seed=0,
        )
        assert want.exact  # C(12, 6) = 924 re-partitions, all enumerated
        results = grid_with(page, "d")
        assert len(results) == 1
        row = results[0]
        assert float(row["d"]) == pytest.approx(want.effect_size, abs=1e-5)
        assert float(row["p"]) == pytest.approx(want.p_value, abs=1e-9)
        sizes = {role: row.get(f"n_{role}") for role in ROLES}
        self.check(
            all(sizes.values()),
            f"Bias: the results table does not show every set size (drawn columns: {sorted(row)})",
        )
        for role, shown in sizes.items():
            if shown:
                assert int(shown) == len(expected[role])
        # Readability (item 10): the results table fits the page; nothing is cut off on the right.
        fits = page.evaluate(
            """() => [...document.querySelectorAll('[data-testid="stDataFrame"]')].map(el => {
                const s = el.querySelector('.dvn-scroller');
                const heads = [...el.querySelectorAll('thead th')].map(th => th.innerText.trim());
                return {heads, scroll: s.scrollWidth, client: s.clientWidth};
            })"""
        )
        table = [f for f in fits if "d" in f["heads"]][0]
        self.check(
            table["scroll"] <= table["client"] + 1,
            f"Bias: the results table is cut off on the right ({table['scroll']} px of columns in "
            f"{table['client']} px; screenshot 9-bias-results.png)",
        )

    def pick_set(self, role: str) -> None:
        """Pick role's folder on the Bias page and tick or untick its "with sub-folders" box."""
        page = self.page
        label, folder_path, subfolders = ROLES[role]
        choose(page, label, folder_path, re.compile(rf"^{re.escape(folder_path)} \("))
        column = role_column(page, role)
        box = column.get_by_role("checkbox", name="with sub-folders")
        if box.is_checked() != subfolders:
            column.get_by_text("with sub-folders", exact=True).click()
            settle(page)
        assert box.is_checked() == subfolders

    # -- Diagnostics: RankMe for the encoder ----------------------------------------------------
    def diagnostics(self) -> None:
        page = self.page
        page.get_by_role("link", name="Diagnostics").click()
        page.get_by_role("button", name="Compute diagnostics").click()
        page.get_by_role("heading", name="Effective rank and eigen-spectrum").wait_for()
        settle(page)
        rank = grid_with(page, "RankMe")
        assert len(rank) == 1 and rank[0]["Encoder"].startswith("pixels")
        matrix = np.stack([self.vectors[p] for p in self.paths])
        assert float(rank[0]["RankMe"]) == pytest.approx(diagnostics.rankme(matrix), rel=1e-4)
        geometry = grid_with(page, "Uniformity")
        assert int(float(geometry[0]["Images"])) == N_IMAGES
        shot(page, "10-diagnostics", page.get_by_role("heading", name="Effective rank and eigen-spectrum"))


def role_column(page: object, role: str) -> object:
    """The Bias page's column of one role (its folder picker, sub-folder box and count)."""
    columns = page.locator('[data-testid="stColumn"]').filter(has=page.get_by_role("checkbox", name="with sub-folders"))
    return columns.nth(list(ROLES).index(role))


def role_caption(page: object, role: str) -> str:
    """What the Bias page says a role's set holds ("8 images: folder warm (with sub-folders)")."""
    return role_column(page, role).get_by_text(re.compile(r"^\d+ images?: ")).inner_text()


def selected_tab(page: object) -> str:
    return page.locator('[role="tab"][aria-selected="true"]').first.inner_text().strip()


def test_newcomer_path_end_to_end(world: dict[str, object]) -> None:
    started = time.monotonic()
    shutil.rmtree(SHOTS, ignore_errors=True)  # only this run's pictures
    with browser_page(width=1440, height=1300, timeout_ms=TIMEOUT_MS) as page:
        walk = Walk(page, world)
        try:
            for step in (walk.data, walk.map, walk.clusters, walk.snapshot, walk.bias, walk.diagnostics):
                step()
        except Exception:
            shot(page, "failure")  # where it stopped
            raise
    assert not walk.problems, "\n".join(walk.problems)
    assert time.monotonic() - started < 240
