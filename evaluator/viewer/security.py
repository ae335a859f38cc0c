"""What keeps the viewer read-only and its pages inert: the Content-Security-Policy, the
methods it answers, where it may bind, and the token it asks for when bound elsewhere.

Stored texts are model output; a page that shows them must never run them. Jinja2 escapes
every value (autoescape), and the policy below is the second line of defence: scripts and
style sheets only from the viewer itself, no inline script, no other origin. Inline style
*attributes* are allowed (`style-src-attr`): matplotlib's inline SVG charts draw with them,
and a style attribute cannot run code.
"""

from __future__ import annotations

import hmac

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
READ_METHODS = frozenset({"GET", "HEAD"})
TOKEN_ENV = "STORYBENCH_VIEW_TOKEN"
TOKEN_COOKIE = "storybench_view_token"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_local(host: str) -> bool:
    """Only the loopback names may be served without a token."""
    return host.strip("[]").lower() in LOCAL_HOSTS


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an absent or empty token never matches."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None
