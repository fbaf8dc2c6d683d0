"""Shared plumbing for the real-browser tests: a Streamlit server on a free port and
Debian's Chromium driven by Playwright (which cannot download its own browser here)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 90_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def streamlit_server(db: Path, cache: Path, log_path: Path, script: str = "app.py") -> Iterator[str]:
    """``streamlit run`` against the given store; yields the base URL, stops the server after."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        script,
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    with _running(command, _server_env(db, cache), log_path, port) as url:
        yield url


def _server_env(db: Path, cache: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "REPLENS_DB": str(db),
        "REPLENS_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


@contextmanager
def _running(command: list[str], env: dict[str, str], log_path: Path, port: int) -> Iterator[str]:
    """Start ``command`` (a Streamlit server on ``port``), wait until it is healthy, stop it after."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"streamlit did not start:\n{log_path.read_text()}")
        time.sleep(0.5)


@contextmanager
def browser_page(width: int = 1440, height: int = 1200, timeout_ms: int = TIMEOUT_MS) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        context.set_default_timeout(timeout_ms)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def settle(page: object) -> None:
    """Wait until Streamlit has finished the current run (its 'Running…' widget is gone)."""
    page.wait_for_timeout(400)  # a rerun may take a moment to show its status widget
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && !document.querySelector('[data-testid=\"stSpinner\"]')",
        timeout=TIMEOUT_MS,
    )
    page.wait_for_timeout(300)


def grid_rows(grid: object) -> list[dict[str, str]]:
    """The rows a ``st.dataframe`` / ``st.data_editor`` shows, read from the grid's accessibility table.

    ``grid`` is a locator of one ``[data-testid="stDataFrame"]`` (or an element inside it). The
    canvas grid keeps a hidden ``<table role="grid">`` of the cells it draws: one dict per row,
    keyed by the column headers as shown (a ``column_config`` label such as "d", not the frame's
    column name). Values are the cells' raw values ("0.8123456"); the canvas paints them with the
    column's format. Only the rows and columns the grid renders are there (it virtualises large
    tables), which for the few-row tables of the pages is all of them.
    """
    return grid.evaluate(  # type: ignore[attr-defined]
        """el => {
            const table = el.querySelector('table[role="grid"]');
            if (!table) return [];
            const heads = [...table.querySelectorAll('thead th')].map(th => th.innerText.trim());
            return [...table.querySelectorAll('tbody tr')].map(tr => {
                const row = {};
                tr.querySelectorAll('td').forEach(td => {
                    const col = parseInt(td.getAttribute('aria-colindex'), 10) - 1;
                    row[heads[col] ?? String(col)] = td.innerText.trim();
                });
                return row;
            });
        }"""
    )


def copy_of_database(db: Path, dest: Path) -> Path:
    """A copy of a running server's DuckDB file (and its write-ahead log), to open with a ``Store``.

    The server keeps its database open, and DuckDB lets no other process open a file that a
    process holds for writing, read-only included. Call this once the page has settled (no write
    in flight); the copy replays the log when opened, so it holds everything committed so far.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in (dest, Path(f"{dest}.wal")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(db, dest)
    wal = Path(f"{db}.wal")
    if wal.exists():
        shutil.copyfile(wal, Path(f"{dest}.wal"))
    return dest


@contextmanager
def streamlit_server_as_configured(
    db: Path, cache: Path, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``streamlit run app.py --server.port N [args]`` with the repository's .streamlit/config.toml
    deciding the address (as ``make demo`` starts it); yields ``http://127.0.0.1:N``."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), *args]
    with _running(command, _server_env(db, cache, env), log_path, port) as url:
        yield url


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6):
    ``{"127.0.0.1"}`` for loopback only, ``{"0.0.0.0"}`` or ``{"::"}`` for every interface."""
    import ipaddress

    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(packed)))
    return found


def script_run_text(url: str, page_name: str = "", timeout_s: float = 30.0) -> str:
    """What a new session's first run of ``page_name`` (a URL path such as "data") sends, as the
    text of every ForwardMsg up to the last ``script_finished``, read straight off the websocket
    with no browser, so nothing a later rerun replaces is missed."""
    import asyncio

    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    async def run() -> str:
        texts: list[str] = []
        stream = url.replace("http://", "ws://", 1) + "/_stcore/stream"
        async with websockets.connect(stream, subprotocols=["streamlit"]) as ws:  # type: ignore[list-item]
            request = BackMsg()
            request.rerun_script.page_name = page_name
            request.rerun_script.query_string = ""
            await ws.send(request.SerializeToString())
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(), 3)  # quiet for 3 s: every rerun is done
                except TimeoutError:
                    break
                message = ForwardMsg()
                message.ParseFromString(raw)  # type: ignore[arg-type]
                texts.append(str(message))
        return "\n".join(texts)

    return asyncio.run(run())
