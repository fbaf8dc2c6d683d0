"""Who may open RepLens (issue 11, "Access and exposure"): loopback by default, a refusal to serve
a network address without access control, the password gate and the OIDC branch.

The gate is driven with AppTest through the real router (``app.py``); the default address is
checked on a real ``streamlit run app.py`` with the repository's own config.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit import config as st_config
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from core.access import ITERATIONS, PasswordCheck, hash_password, is_loopback, open_address_refusal, password_check
from core.errors import InvalidInputError
from tests.browser import listening_addresses, script_run_text, streamlit_server_as_configured

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 60
PASSWORD = "correct horse battery staple"
AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-cookie-secret-for-tests",
    "client_id": "replens-test",
    "client_secret": "not-a-real-secret",
    "server_metadata_url": "https://issuer.invalid/.well-known/openid-configuration",
}


@pytest.fixture(autouse=True)
def no_access_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no password and no 'open on purpose' in the environment."""
    for name in ("REPLENS_PASSWORD", "REPLENS_PASSWORD_HASH", "REPLENS_ALLOW_OPEN"):
        monkeypatch.delenv(name, raising=False)
    password_check.cache_clear()


@pytest.fixture(autouse=True)
def router_runs_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every AppTest run goes through app.py, as on a real server.

    AppTest resets Streamlit's pages/-folder flag before each run, so from the second run on it
    would run the last page's file directly (ui's routing guard acts once per process). A real
    server clears that flag for good once app.py's ``st.navigation`` has run; its first run is
    checked on a real server below (``test_a_fresh_password_server_…``).
    """
    init = PagesManager.__init__

    def init_then_router(self: PagesManager, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init_then_router)


@pytest.fixture
def bound_to() -> Iterator[object]:
    """Sets Streamlit's ``server.address`` option (what ``--server.address`` sets) for the test."""
    before = st_config.get_option("server.address")

    def set_address(address: str | None) -> None:
        st_config.set_option("server.address", address)

    yield set_address
    st_config.set_option("server.address", before)


def run_app(**secrets: object) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for name, value in secrets.items():
        at.secrets[name] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def shows_pages(at: AppTest) -> bool:
    """The Data page (the home page) ran: its title and its server-path box are there."""
    return [t.value for t in at.title] == ["Data"] and "server_path" in [w.key for w in at.text_input]


def shows_nothing_but(at: AppTest, *keys: str) -> None:
    """No page content: only the access screen's title and the given widgets."""
    assert [t.value for t in at.title] == ["RepLens"]
    assert sorted(w.key for w in at.text_input) == sorted(k for k in keys if k == "login_password")
    assert not at.dataframe and not at.tabs and not at.subheader


# --------------------------------------------------------------------------- the password gate


def test_without_a_password_the_pages_show(bound_to: object) -> None:
    assert st_config.get_option("server.address") == "127.0.0.1"  # the repository's .streamlit/config.toml
    assert shows_pages(run_app())


def test_with_a_password_only_the_login_form_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLENS_PASSWORD", PASSWORD)
    at = run_app()
    shows_nothing_but(at, "login_password")
    assert [b.label for b in at.button] == ["Log in"]
    assert not shows_pages(at)
    # The navigation holds the form only, so no URL leads to a page script (AppTest says which
    # pages it can switch to; the browser test below asks the real server for /map).
    with pytest.raises(ValueError, match=re.escape("Known pages: ['RepLens']")):
        at.switch_page("pages/map.py")


def test_a_wrong_password_is_refused_and_shows_no_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLENS_PASSWORD", PASSWORD)
    at = run_app()
    at.text_input(key="login_password").set_value(PASSWORD.upper())
    at.button[0].click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Wrong password."]
    shows_nothing_but(at, "login_password")
    assert "rl_access" not in at.session_state


def test_the_right_password_opens_the_pages_for_the_session_and_log_out_closes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPLENS_PASSWORD", PASSWORD)
    at = run_app()
    at.text_input(key="login_password").set_value(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert shows_pages(at)
    at.run()  # remembered in the session: the next run needs no password
    assert shows_pages(at)
    at.sidebar.button(key="logout").click().run()
    assert not shows_pages(at)
    shows_nothing_but(at, "login_password")


def test_a_changed_password_asks_the_logged_in_session_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLENS_PASSWORD", PASSWORD)
    at = run_app()
    at.text_input(key="login_password").set_value(PASSWORD)
    at.button[0].click().run()
    assert shows_pages(at)
    monkeypatch.setenv("REPLENS_PASSWORD", "another one")
    at.run()
    shows_nothing_but(at, "login_password")
    at.text_input(key="login_password").set_value(PASSWORD)
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong password."]


def test_a_hashed_password_in_secrets_gates_the_pages() -> None:
    secrets = {"replens": {"password_hash": hash_password(PASSWORD, iterations=1_000)}}
    at = run_app(**secrets)
    shows_nothing_but(at, "login_password")
    at.text_input(key="login_password").set_value("guess")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong password."] and not shows_pages(at)
    at.text_input(key="login_password").set_value(PASSWORD)
    at.button[0].click().run()
    assert not at.error and shows_pages(at)


def test_a_malformed_password_hash_serves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLENS_PASSWORD_HASH", "md5$abc")
    at = run_app()
    shows_nothing_but(at)
    assert len(at.error) == 1 and "python -m core.access" in at.error[0].value


# --------------------------------------------------------------------------- the password check itself


def test_the_password_check_is_a_salted_pbkdf2_digest() -> None:
    check = PasswordCheck.from_password(PASSWORD, iterations=1_000)
    # Recomputed independently with hashlib from the stored salt.
    assert check.digest == hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), check.salt, 1_000)
    assert len(check.salt) == 16
    assert check.matches(PASSWORD) and not check.matches(PASSWORD + " ") and not check.matches("")
    again = PasswordCheck.from_password(PASSWORD, iterations=1_000)
    assert again.salt != check.salt and again.digest != check.digest  # a fresh salt each time
    assert PasswordCheck.from_hash(check.encode()) == check
    assert PasswordCheck.from_password(PASSWORD).iterations == ITERATIONS >= 600_000


@pytest.mark.parametrize("text", ["", "plain", "md5$1$00$00", "pbkdf2_sha256$x$00$00", "pbkdf2_sha256$1000$zz$00"])
def test_a_malformed_hash_is_a_typed_error(text: str) -> None:
    with pytest.raises(InvalidInputError, match="python -m core.access"):
        PasswordCheck.from_hash(text)


def test_an_empty_password_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="empty password"):
        PasswordCheck.from_password("")


def test_python_m_core_access_prints_a_hash_that_checks_the_password() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "core.access"], input=PASSWORD + "\n", capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    hashed = re.search(r'^password_hash = "(.+)"$', out.stdout, re.M)
    assert hashed is not None
    check = PasswordCheck.from_hash(hashed.group(1))
    assert check.matches(PASSWORD) and not check.matches("nope")


# --------------------------------------------------------------------------- the listening address


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", " LOCALHOST "])
def test_loopback_addresses(address: str) -> None:
    assert is_loopback(address)
    assert open_address_refusal(address, access_control=False, allow_open=False) is None


@pytest.mark.parametrize("address", [None, "", "0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "replens.example.org"])
def test_a_network_address_needs_access_control_or_an_explicit_yes(address: str | None) -> None:
    assert not is_loopback(address)
    refusal = open_address_refusal(address, access_control=False, allow_open=False)
    assert refusal is not None and "REPLENS_ALLOW_OPEN=1" in refusal and "REPLENS_PASSWORD" in refusal
    assert open_address_refusal(address, access_control=True, allow_open=False) is None
    assert open_address_refusal(address, access_control=False, allow_open=True) is None


@pytest.mark.parametrize("address", ["0.0.0.0", None])
def test_served_on_a_network_without_access_control_no_page_shows(bound_to: object, address: str | None) -> None:
    bound_to(address)  # type: ignore[operator]
    at = run_app()
    shows_nothing_but(at)
    assert len(at.error) == 1
    message = at.error[0].value
    assert "without access control" in message and "REPLENS_ALLOW_OPEN=1" in message
    assert ("0.0.0.0" in message) if address else ("every network interface" in message)


def test_served_on_a_network_on_purpose_shows_the_pages(bound_to: object, monkeypatch: pytest.MonkeyPatch) -> None:
    bound_to("0.0.0.0")  # type: ignore[operator]
    monkeypatch.setenv("REPLENS_ALLOW_OPEN", "1")
    at = run_app()
    assert not at.error and shows_pages(at)


def test_served_on_a_network_with_a_password_asks_for_it(bound_to: object, monkeypatch: pytest.MonkeyPatch) -> None:
    bound_to("0.0.0.0")  # type: ignore[operator]
    monkeypatch.setenv("REPLENS_PASSWORD", PASSWORD)
    at = run_app()
    assert not at.error
    shows_nothing_but(at, "login_password")
    at.text_input(key="login_password").set_value(PASSWORD)
    at.button[0].click().run()
    assert shows_pages(at)


# --------------------------------------------------------------------------- OIDC (st.login)
# No identity provider is reachable offline: these check which branch the router takes with
# ``[auth]`` in secrets (a log-in button, no page) and that a logged-in user (``AppTest.user``,
# what Streamlit fills in after the provider's redirect) sees the pages. The redirect itself is
# Streamlit's and is not exercised here.


def test_with_auth_configured_a_logged_out_user_sees_only_a_log_in_button(bound_to: object) -> None:
    bound_to("0.0.0.0")  # OIDC counts as access control: no refusal
    at = run_app(auth=AUTH)
    shows_nothing_but(at)
    assert not at.error
    assert [(b.key, b.label) for b in at.button] == [("login_oidc", "Log in")]
    with pytest.raises(ValueError, match=re.escape("Known pages: ['RepLens']")):
        at.switch_page("pages/data.py")


def test_with_named_providers_there_is_one_button_each() -> None:
    shared = {k: AUTH[k] for k in ("redirect_uri", "cookie_secret")}
    provider = {k: AUTH[k] for k in ("client_id", "client_secret", "server_metadata_url")}
    at = run_app(auth={**shared, "google": provider, "okta": provider})
    assert [(b.key, b.label) for b in at.button] == [
        ("login_google", "Log in with google"),
        ("login_okta", "Log in with okta"),
    ]


def test_with_auth_configured_a_logged_in_user_sees_the_pages() -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "email": "ada@example.org"}
    at.run()
    assert not at.exception and shows_pages(at)
    assert "Logged in as ada@example.org" in [c.value for c in at.sidebar.caption]
    assert [b.key for b in at.sidebar.button] == ["logout"]


def test_auth_takes_the_place_of_the_password_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLENS_PASSWORD", PASSWORD)
    at = run_app(auth=AUTH)
    assert [b.key for b in at.button] == ["login_oidc"] and "login_password" not in [w.key for w in at.text_input]


@pytest.mark.skipif(importlib.util.find_spec("authlib") is not None, reason="Authlib is installed here")
def test_log_in_without_authlib_says_what_to_install() -> None:
    at = run_app(auth=AUTH)
    at.button(key="login_oidc").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "Authlib" in at.error[0].value
    assert not shows_pages(at)


# --------------------------------------------------------------------------- a real server


def non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.254.254.254", 9))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if is_loopback(address) else address


def test_streamlit_run_app_with_the_repository_config_listens_on_loopback_only(tmp_path: Path) -> None:
    """``streamlit run app.py`` as ``make demo`` starts it (no --server.address): bound to 127.0.0.1."""
    with streamlit_server_as_configured(tmp_path / "replens.duckdb", tmp_path / "cache", tmp_path / "log") as url:
        port = int(url.rsplit(":", 1)[1])
        bound = listening_addresses(port)
        assert bound == {"127.0.0.1"}, bound  # before: {'::'}, every interface
        other = non_loopback_address()
        if other is not None:
            with socket.socket() as sock:
                sock.settimeout(2)
                assert sock.connect_ex((other, port)) != 0, f"reachable on {other}:{port}"


DATA_PAGE_TEXT = ("Path on the server", "Add images", "No datasets yet")


def test_a_fresh_password_server_sends_no_page_even_to_a_first_request_naming_one(tmp_path: Path) -> None:
    """The first run of a new server process is where Streamlit's old pages/-folder mode could run
    a page file without app.py (ui's routing guard reruns it through the router); on a real
    server, read off the websocket, the first session asking for /data or /map gets the form only."""
    env = {"REPLENS_PASSWORD": PASSWORD}
    with streamlit_server_as_configured(tmp_path / "db", tmp_path / "cache", tmp_path / "log", env=env) as url:
        for page in ("data", "map"):
            sent = script_run_text(url, page)
            assert "Password" in sent and "Log in" in sent
            assert not [text for text in (*DATA_PAGE_TEXT, "Map") if f'"{text}' in sent], page


def test_the_websocket_probe_sees_page_content_without_a_password(tmp_path: Path) -> None:
    """The control for the test above: the same probe on an open (loopback) server sees the Data page."""
    with streamlit_server_as_configured(tmp_path / "db", tmp_path / "cache", tmp_path / "log") as url:
        sent = script_run_text(url, "data")
        assert all(text in sent for text in DATA_PAGE_TEXT) and "Password" not in sent


def test_the_make_demo_target_serves_on_loopback_unless_told() -> None:
    def demo_command(*args: str) -> str:
        out = subprocess.run(["make", "-n", "demo", *args], capture_output=True, text=True, cwd=ROOT, check=True)
        [line] = [x for x in out.stdout.splitlines() if "streamlit run app.py" in x]
        return line

    assert "--server.address 127.0.0.1" in demo_command()
    assert "--server.address 0.0.0.0" in demo_command("REPLENS_ADDRESS=0.0.0.0")
