"""Who may open a served RepLens: the listening address and the password gate (no Streamlit here).

``app.py`` asks :func:`open_address_refusal` whether the address Streamlit is bound to may be
served as configured, and checks a typed password with :class:`PasswordCheck`. A password is
never compared as text: it is stretched with PBKDF2-HMAC-SHA256 and a random salt, and the
digests are compared with ``hmac.compare_digest``.

Make a hash to keep in ``.streamlit/secrets.toml`` (``[replens] password_hash = "…"``) or in
``REPLENS_PASSWORD_HASH`` instead of the password itself::

    python -m core.access          # asks for the password twice, prints the hash line
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import sys
from dataclasses import dataclass
from functools import lru_cache

from core.errors import InvalidInputError

SCHEME = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256: ~0.3 s per attempt here
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(address: str | None) -> bool:
    """Whether Streamlit bound to ``address`` is reachable from this machine only.

    No address (Streamlit's own default) means every interface; a host name other than
    localhost may resolve to a public interface, so only loopback addresses count.
    """
    if address is None or not address.strip():
        return False
    text = address.strip().strip("[]").lower()
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def open_address_refusal(address: str | None, *, access_control: bool, allow_open: bool) -> str | None:
    """Why the app must not serve on ``address`` as configured, or None when it may.

    Loopback is always fine; a network address needs access control (a password or OIDC login),
    or the operator saying plainly that an open instance is intended (``REPLENS_ALLOW_OPEN=1``).
    """
    if is_loopback(address) or access_control or allow_open:
        return None
    where = f"address {address}" if address and address.strip() else "every network interface"
    return (
        f"RepLens is served on {where} without access control, so anyone who can reach this machine could "
        "read and change its datasets. Set a password (REPLENS_PASSWORD, or [replens] password_hash in "
        ".streamlit/secrets.toml), or configure an OIDC login ([auth] in .streamlit/secrets.toml), or serve "
        "on 127.0.0.1 only (the default). To serve it open on purpose, start it with REPLENS_ALLOW_OPEN=1."
    )


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


@dataclass(frozen=True)
class PasswordCheck:
    """A salted PBKDF2 digest of the one password a served instance accepts."""

    salt: bytes
    digest: bytes
    iterations: int = ITERATIONS

    @classmethod
    def from_password(cls, password: str, iterations: int = ITERATIONS) -> PasswordCheck:
        """A check for a password given in clear (``REPLENS_PASSWORD``), with a fresh random salt."""
        if not password:
            raise InvalidInputError("An empty password protects nothing: set a real one, or none.")
        salt = os.urandom(16)
        return cls(salt, _derive(password, salt, iterations), iterations)

    @classmethod
    def from_hash(cls, text: str) -> PasswordCheck:
        """A check from ``pbkdf2_sha256$<iterations>$<salt hex>$<digest hex>`` (``python -m core.access``)."""
        parts = text.strip().split("$")
        try:
            scheme, iterations, salt, digest = parts
            check = cls(bytes.fromhex(salt), bytes.fromhex(digest), int(iterations))
        except ValueError:
            scheme, check = "", None
        if scheme != SCHEME or check is None or check.iterations < 1 or len(check.salt) < 8 or not check.digest:
            raise InvalidInputError(
                "The password hash is not of the form pbkdf2_sha256$<iterations>$<salt>$<digest>: "
                "make one with `python -m core.access`."
            )
        return check

    def matches(self, attempt: str) -> bool:
        """Whether ``attempt`` is the password (constant-time comparison of the digests)."""
        return hmac.compare_digest(_derive(attempt, self.salt, self.iterations), self.digest)

    def encode(self) -> str:
        return f"{SCHEME}${self.iterations}${self.salt.hex()}${self.digest.hex()}"

    @property
    def fingerprint(self) -> str:
        """Names this password setting without revealing it: a session logged in under an older
        password is asked again after the password changes."""
        return hashlib.sha256(self.salt + self.digest).hexdigest()[:16]


@lru_cache(maxsize=4)
def password_check(password: str | None = None, password_hash: str | None = None) -> PasswordCheck | None:
    """The check for the configured password (a hash wins over a clear password), or None when
    neither is set. Cached: a clear password is stretched once per process, not per page run."""
    if password_hash:
        return PasswordCheck.from_hash(password_hash)
    if password:
        return PasswordCheck.from_password(password)
    return None


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    """``password`` as a storable salted hash (what ``REPLENS_PASSWORD_HASH`` takes)."""
    return PasswordCheck.from_password(password, iterations).encode()


def main() -> int:
    """Ask for a password (twice on a terminal, one line from a pipe) and print its hash."""
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password for RepLens: ")
        if getpass.getpass("Again: ") != password:
            print("error: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        hashed = hash_password(password)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("# .streamlit/secrets.toml")
    print("[replens]")
    print(f'password_hash = "{hashed}"')
    print(f"# or in the environment: REPLENS_PASSWORD_HASH='{hashed}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
