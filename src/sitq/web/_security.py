"""Who may use the dashboard and what a browser may do with it, checked before any route runs.

:class:`Guard` is an ASGI middleware that, for every HTTP request:

1. answers 400 when ``allowed_hosts`` is set and the ``Host`` header names another host (a
   dashboard on 127.0.0.1 then cannot be reached through a DNS name that a hostile site
   rebinds to the loopback address);
2. answers 403 to an unsafe method (anything but GET, HEAD and OPTIONS) whose ``Origin``
   header (or, without one, whose ``Referer``) names another origin than the request's own
   or a trusted one, and to an ``Origin`` of ``null``: a page elsewhere cannot drive the
   dashboard through the visitor's browser;
3. with a token, admits a request only with ``Authorization: Bearer <token>`` or the cookie the
   login form sets (an HMAC of the token, never the token itself; ``HttpOnly``,
   ``SameSite=Strict``); pages then redirect to ``/login``, everything else answers 401. Only
   ``/login``, ``/logout`` and the stylesheet (``GET /static/sitq.css``, the same file in every
   copy of sitq, so that the login page is styled) are open without it. Tokens are compared
   with :func:`hmac.compare_digest`;
4. read-only, answers 403 to every unsafe method but logging in and out;
5. adds ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, a
   ``Content-Security-Policy`` that allows scripts, styles and fetches from the dashboard's own
   origin only (no inline script, no inline event handler), ``Referrer-Policy: same-origin``,
   and ``Cache-Control: no-store`` on everything but the static files, to every answer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "COOKIE",
    "OPEN_ASSETS",
    "OPEN_PATHS",
    "Guard",
    "cookie_path",
    "cookie_value",
    "root_path",
    "route_path",
    "token_matches",
]

COOKIE = "sitq_session"
"""The name of the cookie the login form sets."""

OPEN_PATHS = frozenset({"/login", "/logout"})
"""The only paths answered without the token (and the only unsafe ones allowed read-only)."""

OPEN_ASSETS = frozenset({"/static/sitq.css"})
"""Static files answered to GET and HEAD without the token: the login page's stylesheet, which
holds nothing of the dashboard's data."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"referrer-policy", b"same-origin"),
]


def root_path(scope: Scope) -> str:
    """Where the dashboard is mounted (``""`` at the root, ``"/sitq"`` under ``/sitq``)."""
    return str(scope.get("root_path", "")).rstrip("/")


def route_path(scope: Scope) -> str:
    """The request's path inside the dashboard, without the mount's prefix."""
    path = str(scope["path"])
    root = root_path(scope)
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


def cookie_value(token: str) -> str:
    """What the login cookie holds for ``token``: an HMAC of it, so the cookie is not the
    token (a stolen cookie does not reveal it)."""
    return hmac.new(token.encode(), b"sitq web login", hashlib.sha256).hexdigest()


def cookie_path(scope: Scope) -> str:
    """The cookie's path: the dashboard's mount point."""
    return root_path(scope) or "/"


def token_matches(given: str, token: str) -> bool:
    """``given`` is the token (compared in constant time)."""
    return hmac.compare_digest(given.encode(), token.encode())


def _origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a URL, or ``None`` if it has no host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not host or not scheme:
        return None
    return scheme, host.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def _host_name(host_header: str) -> str | None:
    found = _origin(f"http://{host_header}")
    return None if found is None else found[1]


class Guard:
    """The checks of the module docstring, around the dashboard's routes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        read_only: bool,
        trusted_origins: Iterable[str] = (),
        allowed_hosts: Sequence[str] | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_value(token) if token else None
        self.read_only = read_only
        self.trusted = {o for o in map(_origin, trusted_origins) if o is not None}
        self.allowed_hosts = (
            None if allowed_hosts is None else {h.strip("[]").lower() for h in allowed_hosts}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        static = path.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = list(_HEADERS)
                if not static:
                    extra.append((b"cache-control", b"no-store"))
                headers.extend(h for h in extra if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        refusal = self._refusal(scope, path)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, path: str) -> Response | None:
        headers = Headers(scope=scope)
        method = str(scope["method"]).upper()
        if self.allowed_hosts is not None:
            host = _host_name(headers.get("host", ""))
            if host is None or host.strip("[]") not in self.allowed_hosts:
                return _refuse(
                    path,
                    400,
                    "invalid Host header: this dashboard answers only "
                    f"to {', '.join(sorted(self.allowed_hosts))}",
                )
        if method not in _SAFE_METHODS and not self._same_origin(scope, headers):
            return _refuse(
                path,
                403,
                "cross-site request refused: the Origin (or Referer) of "
                "this request names another site",
            )
        if (
            self.token is not None
            and path not in OPEN_PATHS
            and not (path in OPEN_ASSETS and method in ("GET", "HEAD"))
            and not self._admitted(headers)
        ):
            if method in ("GET", "HEAD") and not _is_machine_path(path):
                target = route_path(scope)
                query = scope.get("query_string", b"").decode("latin-1")
                if query:
                    target += "?" + query
                return RedirectResponse(
                    f"{root_path(scope)}/login?next={quote(target, safe='')}", status_code=303
                )
            response = _refuse(
                path,
                401,
                "this dashboard needs its token: send "
                "'Authorization: Bearer <token>' or log in at /login",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="sitq"'
            return response
        if self.read_only and method not in _SAFE_METHODS and path not in OPEN_PATHS:
            return _refuse(path, 403, "this dashboard is read-only: it takes no action")
        return None

    def _admitted(self, headers: Headers) -> bool:
        assert self.token is not None
        assert self.cookie is not None
        authorization = headers.get("authorization", "")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and token_matches(given.strip(), self.token):
            return True
        cookie = _cookie(headers, COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie.encode())

    def _same_origin(self, scope: Scope, headers: Headers) -> bool:
        claimed = headers.get("origin")
        if claimed is None:
            referer = headers.get("referer")
            if referer is None:
                return True  # not sent by a browser's cross-site form or fetch
            claimed = referer
        if claimed.strip() == "null":
            return False
        source = _origin(claimed)
        if source is None:
            return False
        scheme = str(scope.get("scheme", "http"))
        own = _origin(f"{scheme}://{headers.get('host', '')}")
        return source == own or source in self.trusted


def _is_machine_path(path: str) -> bool:
    return path.startswith(("/api/", "/static/")) or path in ("/api", "/metrics")


def _refuse(path: str, status: int, message: str) -> Response:
    if path.startswith("/api/") or path == "/api":
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(message, status_code=status)


def _cookie(headers: Headers, name: str) -> str | None:
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
    return None
