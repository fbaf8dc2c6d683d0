"""The CLI works while the app is running, and the app shows what it did.

A real Streamlit server serves a page in Chromium (its store already holds a dataset, so every
rerun reads the file). Meanwhile ``python -m core ingest``, ``embed`` (chunks of 8, with the page
reloaded again and again while it runs, so the server reads between the command's writes) and
``cluster`` run in subprocesses against the same database file. Each must succeed; then the
reloaded pages show the new dataset, its vectors and the cluster run. Before the store let go
of the file when idle, each of these commands failed with "database is locked".
Screenshots: ``test-output/cli_while_app/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from conftest import PYTHON, REPO_ROOT, png_bytes, run_cli, write_file
from core import images
from core.encoders import load_encoder
from core.extract import embed_dataset
from core.store import Store
from tests.browser import browser_page, grid_rows, settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "cli_while_app"
N_NEW = 60


def pick(page: object, label: str, typed: str, option: re.Pattern[str], within: object | None = None) -> None:
    combo = (within or page).get_by_role("combobox", name=label).first
    combo.click()
    combo.fill(typed)
    page.get_by_role("option", name=option).first.click()
    settle(page)


def table_with(page: object, header: str, timeout_s: float = 20) -> list[dict[str, str]]:
    """Rows of the first grid headed ``header`` (the canvas grid fills its hidden table a moment late)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        grids = page.locator('[data-testid="stDataFrame"]')
        for i in range(grids.count()):
            rows = grid_rows(grids.nth(i))
            if rows and header in rows[0]:
                return rows
        page.wait_for_timeout(250)
    raise AssertionError(f"no table with a column {header!r}")


def test_cli_ingests_embeds_and_clusters_while_the_app_serves_a_page(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    db, cache = Path(isolated_env["REPLENS_DB"]), Path(isolated_env["REPLENS_CACHE"])
    store = Store(db, cache)
    old = tmp_path / "old"
    for i in range(12):
        write_file(old, f"o{i % 2}/old_{i:02d}.png", png_bytes(50_000 + i, size=16))
    scan = images.scan(old, cache_dir=cache)
    store.ingest("existing", scan.root, scan.records, scan.skipped)
    embed_dataset(store, "existing", load_encoder("pixels", "cpu"))
    store.close()
    new = tmp_path / "new"
    for i in range(N_NEW):
        write_file(new, f"n{i % 3}/new_{i:03d}.png", png_bytes(60_000 + i, size=16))
    SHOTS.mkdir(parents=True, exist_ok=True)

    with streamlit_server(db, cache, tmp_path / "server.log") as url, browser_page(1300, 1000) as page:
        page.goto(url)
        page.get_by_role("heading", name="Data", exact=True).wait_for()
        settle(page)
        assert [r["Dataset"] for r in table_with(page, "Dataset")] == ["existing"]

        ingested = run_cli(["ingest", str(new), "--dataset", "fresh", "--json"])
        assert ingested.returncode == 0, ingested.stderr
        assert json.loads(ingested.stdout)["added"] == N_NEW

        embed = subprocess.Popen(
            [PYTHON, "-m", "core", "embed", "--dataset", "fresh", "--encoder", "pixels", "--batch-size", "4", "--json"],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "REPLENS_EMBED_CHUNK": "8"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        reloads = 0
        while embed.poll() is None:  # the app keeps reading while the command writes
            page.reload()
            settle(page)
            reloads += 1
        out, err = embed.communicate()
        assert embed.returncode == 0, err
        assert json.loads(out)["encoded"] == N_NEW and reloads >= 1

        clustered = run_cli(
            ["cluster", "--dataset", "fresh", "--encoder", "pixels", "--method", "kmeans", "--k", "3", "--json"]
        )
        assert clustered.returncode == 0, clustered.stderr
        run_id = json.loads(clustered.stdout)["run_id"]

        # The reloaded Data page: the new dataset, with every image embedded.
        page.reload()
        settle(page)
        overview = {r["Dataset"]: r["Images"] for r in table_with(page, "Dataset")}
        assert overview == {"existing": "12", "fresh": str(N_NEW)}
        pick(page, "Dataset", "fresh", re.compile("^fresh$"))
        status = table_with(page, "Embedded")
        assert [(r["Key"], r["Embedded"]) for r in status] == [("pixels@v1/pixels/none", str(N_NEW))]
        page.screenshot(path=str(SHOTS / "data.png"), full_page=True)

        # The Clusters page opens the dataset just picked and lists the command's run.
        page.goto(f"{url}/clusters")
        page.get_by_role("heading", name="Clusters", exact=True).wait_for()
        settle(page)
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("Stored runs (1)").wait_for()
        run_box = sidebar.get_by_role("combobox", name=re.compile("^Stored runs"))
        assert run_box.count() == 1
        box = sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Stored runs").first
        shown = box.inner_text() + " " + box.locator("input").first.input_value()
        assert f"kmeans · 3 clusters · {run_id[:6]}" in shown
        page.get_by_text(run_id, exact=True).first.wait_for()  # the run opened: its caption names it in full
        page.screenshot(path=str(SHOTS / "clusters.png"), full_page=True)
