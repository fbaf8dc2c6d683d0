"""RepLens dashboard: the router. Run with ``streamlit run app.py``.

Each page is one line in ``PAGES``; a page that is not built yet is simply not listed.

Before any page, the router checks who may see it (``README.md``, "Serving on a network"):

- bound to a network address (not loopback) with no access control configured, it refuses to
  serve any page, unless ``REPLENS_ALLOW_OPEN=1`` says an open instance is intended;
- with ``[auth]`` in ``.streamlit/secrets.toml`` it asks for Streamlit's OIDC login (``st.login``);
- else with a password (``REPLENS_PASSWORD`` / ``REPLENS_PASSWORD_HASH``, or ``[replens] password``
  / ``password_hash`` in secrets; the environment wins) it asks for that password once per session.

A gated session gets a navigation of that one screen, so no page script runs, whatever URL it asks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from core.access import PasswordCheck, open_address_refusal, password_check
from core.config import allow_open, env_password, env_password_hash
from core.errors import RepLensError

ACCESS_KEY = "rl_access"  # session state: fingerprint of the password this session logged in with

# (script, title users see, icon, url path). The first entry is the home page.
PAGES: list[tuple[str, str, str, str]] = [
    ("pages/data.py", "Data", ":material/folder_open:", "data"),
    ("pages/map.py", "Map", ":material/scatter_plot:", "map"),
    ("pages/neighbors.py", "Neighbors", ":material/join_inner:", "neighbors"),
    ("pages/clusters.py", "Clusters", ":material/hub:", "clusters"),
    ("pages/bias.py", "Bias", ":material/balance:", "bias"),
    ("pages/snapshots.py", "Snapshots", ":material/photo_library:", "snapshots"),
    ("pages/diagnostics.py", "Diagnostics", ":material/monitoring:", "diagnostics"),
    ("pages/jobs.py", "Jobs", ":material/pending_actions:", "jobs"),
]


def link_page_index(query_params: object) -> int | None:
    """The PAGES index a shared link opens (?snapshot=<id> -> Snapshots), or None."""
    if "snapshot" not in query_params:  # type: ignore[operator]
        return None
    return next((i for i, (script, *_) in enumerate(PAGES) if script == "pages/snapshots.py"), None)


def secrets_section(name: str) -> Mapping[str, Any] | None:
    """A table of ``.streamlit/secrets.toml`` (``[auth]``, ``[replens]``), or None (no file, no table)."""
    try:
        section = st.secrets.get(name)
    except StreamlitSecretNotFoundError:
        return None
    return section if isinstance(section, Mapping) else None


def configured_password() -> PasswordCheck | None:
    """The password gate's check: from the environment if set there, else from secrets; None: no password.

    A malformed hash raises InvalidInputError, and the router then serves nothing (fails closed).
    """
    if env_password() or env_password_hash():
        return password_check(env_password(), env_password_hash())
    section = secrets_section("replens") or {}
    clear, hashed = section.get("password"), section.get("password_hash")
    return password_check(str(clear) if clear else None, str(hashed) if hashed else None)


def oidc_providers() -> list[str | None] | None:
    """The OIDC providers ``[auth]`` configures (None: the one at ``[auth]``'s top level), or None
    when there is no ``[auth]`` table and ``st.login`` is not used."""
    auth = secrets_section("auth")
    if auth is None:
        return None
    named: list[str | None] = [key for key, value in auth.items() if isinstance(value, Mapping)]
    return ([None] if "client_id" in auth or not named else []) + named


def oidc_login_screen(providers: list[str | None]) -> Callable[[], None]:
    def log_in() -> None:
        st.title("RepLens")
        st.write("This RepLens asks you to log in first.")
        for provider in providers:
            label = "Log in" if provider is None else f"Log in with {provider}"
            if st.button(label, key=f"login_{provider or 'oidc'}", type="primary", icon=":material/login:"):
                if importlib.util.find_spec("authlib") is None:
                    st.error(
                        'Logging in needs Authlib on the server: install it with `pip install "Authlib>=1.3.2"` '
                        "(what `streamlit[auth]` adds) and start RepLens again.",
                        icon=":material/error:",
                    )
                else:
                    st.login(provider)

    return log_in


def password_screen(check: PasswordCheck) -> Callable[[], None]:
    def log_in() -> None:
        st.title("RepLens")
        with st.form("login", border=True):
            attempt = st.text_input("Password", type="password", key="login_password")
            submitted = st.form_submit_button("Log in", type="primary", icon=":material/login:")
        if submitted:
            if check.matches(attempt):
                st.session_state[ACCESS_KEY] = check.fingerprint
                st.rerun()
            st.error("Wrong password.", icon=":material/lock:")

    return log_in


def refusal_screen(message: str) -> Callable[[], None]:
    def refused() -> None:
        st.title("RepLens")
        st.error(message, icon=":material/gpp_bad:")

    return refused


def show_only(screen: Callable[[], None], title: str) -> None:
    """Serve ``screen`` as the only page: no page script of ``PAGES`` can run, whatever the URL."""
    st.navigation([st.Page(screen, title=title, url_path="access", default=True)], position="hidden").run()


def access_screen() -> Callable[[], None] | None:
    """The screen this session sees instead of the pages, or None when it may see them."""
    try:
        check = configured_password()
    except RepLensError as exc:
        return refusal_screen(f"RepLens cannot check passwords as configured: {exc}")
    providers = oidc_providers()
    refusal = open_address_refusal(
        st.get_option("server.address"),
        access_control=providers is not None or check is not None,
        allow_open=allow_open(),
    )
    if refusal is not None:
        return refusal_screen(refusal)
    if providers is not None:
        return None if st.user.get("is_logged_in") else oidc_login_screen(providers)
    if check is not None and st.session_state.get(ACCESS_KEY) != check.fingerprint:
        return password_screen(check)
    return None


def logout_button() -> None:
    """In the sidebar of a session that logged in (OIDC or password): log out again."""
    if st.user.get("is_logged_in"):
        who = st.user.get("email") or st.user.get("name")
        if who:
            st.sidebar.caption(f"Logged in as {who}")
        if st.sidebar.button("Log out", key="logout", icon=":material/logout:"):
            st.logout()
    elif st.session_state.get(ACCESS_KEY):
        if st.sidebar.button("Log out", key="logout", icon=":material/logout:"):
            st.session_state.pop(ACCESS_KEY, None)
            st.rerun()


def main() -> None:
    st.set_page_config(page_title="RepLens", page_icon=":material/blur_on:", layout="wide")
    screen = access_screen()
    if screen is not None:
        show_only(screen, "RepLens")
        return
    pages = [
        st.Page(script, title=title, icon=icon, url_path=url, default=(i == 0))
        for i, (script, title, icon, url) in enumerate(PAGES)
    ]
    current = st.navigation(pages, position="sidebar")
    logout_button()
    target = link_page_index(st.query_params)
    if target is not None and current is not pages[target]:
        # A shared snapshot link lands on the Snapshots page whatever path it names.
        st.switch_page(pages[target], query_params=st.query_params.to_dict())
    try:
        current.run()
    except RepLensError as exc:
        # Whatever page it comes from, an error the user can fix (locked database, missing
        # embeddings…) is a message that says what to do, not a traceback.
        st.error(str(exc), icon=":material/error:")


main()
