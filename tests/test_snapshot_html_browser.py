"""The snapshot HTML page in a real (headless) Chromium: offline, all points drawn, every
cluster listed, hover and galleries show thumbnails, and a script in a label stays text."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_snapshots import HOSTILE_LABEL, build_world

from core import snapshots
from core.store import Store

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")


def test_imported_snapshot_page_renders_offline_and_keeps_labels_as_text(store: Store, tmp_path: Path) -> None:
    build_world(store, tmp_path / "images")
    sid = snapshots.save_snapshot(
        store, "run1", title="<b>Pets</b>", notes="</script><script>window.__pwned=2</script>"
    )
    # The page is made from an *imported* copy: what a colleague would open.
    archive = snapshots.export_snapshot(store, sid, tmp_path / "s.replens").path
    fresh = Store(tmp_path / "fresh" / "f.duckdb", tmp_path / "fresh" / "cache")
    try:
        snapshots.import_snapshot(fresh, archive)
        page_path = snapshots.snapshot_html(fresh, sid, tmp_path / "page" / "s.html")
        snap = snapshots.load_snapshot(fresh, sid)
    finally:
        fresh.close()

    requests: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(page_path.resolve().as_uri())
            page.wait_for_function("document.getElementById('map').data !== undefined", timeout=15_000)

            n_points = page.evaluate("document.getElementById('map').data.reduce((n, t) => n + t.x.length, 0)")
            assert n_points == snap.n_points == 8
            assert page.locator("#cluster-list li.cluster").count() == len(snap.clusters) == 4
            assert page.evaluate("window.__pwned") is None
            label = page.locator("#cluster-list li.cluster[data-cluster='0'] .cluster-label")
            assert label.inner_text() == HOSTILE_LABEL
            assert page.locator("h1").inner_text() == "<b>Pets</b>"
            assert "window.__pwned=2" in page.locator(".notes").inner_text()

            # Hovering a point of cluster 0 puts its thumbnail and path in the side panel.
            x, y = page.evaluate("""(() => {
                const gd = document.getElementById('map'), fl = gd._fullLayout, r = gd.getBoundingClientRect();
                const i = gd._fullData.findIndex(t => t.customdata && t.name.indexOf('window.__pwned') >= 0);
                const t = gd._fullData[i];
                return [r.left + fl.xaxis._offset + fl.xaxis.l2p(t.x[0]),
                        r.top + fl.yaxis._offset + fl.yaxis.l2p(t.y[0])];
            })()""")
            page.mouse.move(x - 15, y - 15)
            page.mouse.move(x, y, steps=3)
            page.wait_for_function(
                "document.getElementById('hover-img').src.startsWith('data:image/webp')", timeout=5_000
            )
            assert HOSTILE_LABEL in page.locator("#hover-caption").inner_text()

            # Opening a cluster fills its gallery with data: URI thumbnails.
            page.locator("#cluster-list li.cluster[data-cluster='0'] summary").click()
            size = int(snap.clusters.loc[snap.clusters["cluster"] == 0, "size"].iloc[0])
            tiles = page.locator(".gallery[data-cluster='0'] img")
            tiles.first.wait_for(timeout=5_000)
            assert tiles.count() == size
            assert all(
                src.startswith("data:image/webp;base64,") for src in tiles.evaluate_all("els => els.map(e => e.src)")
            )
            assert page.evaluate("window.__pwned") is None
        finally:
            browser.close()
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert errors == []
