"""Who may use the studio, and which requests it believes.

- **Bind address.** Loopback (``127.0.0.1``, ``::1``, ``localhost``) by default. Any other
  ``--host`` needs a password in the environment (``EDGECLF_STUDIO_TOKEN``, or the variable named by
  ``--token-env``); without one the studio refuses to start.
- **Sign-in.** With a password set, every page and API call needs a session (a random cookie,
  HttpOnly, SameSite=Strict, issued by the sign-in form for the right password) or an
  ``Authorization: Bearer <password>`` header; anything else is redirected to ``/login`` (pages)
  or answered 401 (API).
- **CSRF.** Every state-changing request (POST) must carry the page's CSRF token in the
  ``X-CSRF-Token`` header (or a ``csrf`` form field), equal to the ``edgeclf_csrf`` cookie the page
  was served with (double submit; SameSite=Strict), and an ``Origin`` (when the browser sends one)
  of this host. A page on another site can neither read the token nor send the header.
- **Host header.** Bound to loopback, only loopback host names are served (a DNS-rebinding page
  cannot reach the studio under its own name).
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TOKEN_ENV = "EDGECLF_STUDIO_TOKEN"
SESSION_COOKIE = "edgeclf_session"
CSRF_COOKIE = "edgeclf_csrf"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


class StudioSecurityError(ValueError):
    """The studio cannot start safely as asked (e.g. a public address without a password)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    """The studio's security policy for one process; see the module doc."""

    host: str
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    _sessions: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            self.token = None
        if not is_loopback(self.host) and self.token is None:
            raise StudioSecurityError(
                f"--host {self.host} serves the studio beyond this machine: set a password in the environment "
                f"first ({TOKEN_ENV}=..., or the variable named by --token-env); without one only 127.0.0.1 is allowed")
        if self.token is not None and len(self.token) < 8:
            raise StudioSecurityError(f"the studio password in the environment is {len(self.token)} characters; "
                                      "use at least 8")

    @property
    def needs_login(self) -> bool:
        return self.token is not None

    # -- host names ---------------------------------------------------------------------
    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request's ``Host`` may be served: any when bound beyond loopback (the password
        guards it), else loopback names and ``allowed_hosts`` only."""
        if not is_loopback(self.host):
            return True
        name = _host_name(host_header or "")
        return name in LOOPBACK_NAMES or name in self.allowed_hosts

    # -- sessions -----------------------------------------------------------------------
    def check_password(self, password: str) -> bool:
        return self.token is not None and hmac.compare_digest(password.encode(), self.token.encode())

    def new_session(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions.add(sid)
        return sid

    def end_session(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.discard(sid or "")

    def signed_in(self, session_cookie: str | None, authorization: str | None) -> bool:
        if not self.needs_login:
            return True
        if authorization and authorization.lower().startswith("bearer "):
            return self.check_password(authorization[7:].strip())
        with self._lock:
            return bool(session_cookie) and session_cookie in self._sessions

    # -- CSRF ---------------------------------------------------------------------------
    @staticmethod
    def new_csrf() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def csrf_ok(cookie: str | None, sent: str | None) -> bool:
        return bool(cookie) and bool(sent) and hmac.compare_digest(cookie.encode(), sent.encode())

    @staticmethod
    def origin_ok(origin: str | None, host_header: str | None) -> bool:
        """A browser's ``Origin`` must be this studio (scheme aside); no Origin (curl, old browsers) passes
        to the CSRF token check alone."""
        if not origin:
            return True
        if origin == "null":
            return False
        return urlsplit(origin).netloc.lower() == (host_header or "").lower()


def _host_name(host_header: str) -> str:
    """``host`` of a ``Host: host[:port]`` header (``[::1]:8000`` -> ``::1``)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h
