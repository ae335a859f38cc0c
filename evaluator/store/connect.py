"""Which MongoDB to use, and connecting to it so that a bad one fails fast and clearly.

Selection: the `uri` argument (the CLI's `--mongo-uri`), else `STORYBENCH_MONGO_URI`, else the
embedded default (see `embedded.py`). Every failure is a `StoreUnavailableError` whose message
names the URI without its password, the cause and the fix, within a few seconds.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl

from pymongo import MongoClient
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure

from evaluator.store.errors import StoreUnavailableError

URI_ENV = "STORYBENCH_MONGO_URI"
DEFAULT_DB_NAME = "storybench"

# Short enough that a dead database is reported in seconds, long enough for a remote Atlas.
SERVER_SELECTION_TIMEOUT_MS = 3_000
CONNECT_TIMEOUT_MS = 3_000
# Bounds a single operation on a server that accepted the connection but hangs.
SOCKET_TIMEOUT_MS = 30_000

_URI_RE = re.compile(r"^(?P<scheme>mongodb(?:\+srv)?://)(?:(?P<user>[^@/]*)@)?(?P<rest>.*)$")
_SECRET_OPTIONS = ("password", "token", "secret", "authmechanismproperties")
AUTH_FAILED_CODES = {18}  # AuthenticationFailed


def resolve_uri(uri: str | None) -> tuple[str | None, str]:
    """(uri, where it came from); uri None means "use the embedded default"."""
    if uri:
        return uri, "--mongo-uri"
    env = os.environ.get(URI_ENV, "").strip()
    if env:
        return env, URI_ENV
    return None, "embedded default"


def redact_uri(uri: str) -> str:
    """The URI with its password (and secret-looking options) replaced by `***`."""
    match = _URI_RE.match(uri)
    if match is None:
        return uri
    user = match.group("user")
    shown = match.group("scheme")
    if user is not None:
        name, sep, _password = user.partition(":")
        shown += f"{name}:***@" if sep else f"{name}@"
    rest = match.group("rest")
    base, qmark, query = rest.partition("?")
    if qmark:
        parts = []
        for key, value in parse_qsl(query, keep_blank_values=True):
            secret = any(word in key.lower() for word in _SECRET_OPTIONS)
            parts.append(f"{key}={'***' if secret else value}")
        base += "?" + "&".join(parts)
    return shown + base


def has_credentials(uri: str) -> bool:
    match = _URI_RE.match(uri)
    return bool(match and match.group("user"))


def short_cause(exc: BaseException, limit: int = 300) -> str:
    """pymongo's messages carry a topology dump; keep the part a person needs."""
    text = str(exc)
    for cut in (" (configured timeouts", ", Timeout:", ", Topology Description:"):
        text = text.split(cut, 1)[0]
    text = text.strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_client(uri: str, source: str) -> MongoClient[dict[str, Any]]:
    """A client with short timeouts (unless the URI sets its own) and tz-aware datetimes."""
    shown = redact_uri(uri)
    if not _URI_RE.match(uri):
        raise StoreUnavailableError(
            f"{shown!r} (from {source}) is not a MongoDB URI. "
            "Fix: use mongodb://HOST:PORT/ or mongodb+srv://HOST/, or unset it to use the "
            "embedded database."
        )
    options = {key.lower() for key, _ in parse_qsl(uri.partition("?")[2])}
    kwargs: dict[str, Any] = {"tz_aware": True, "appname": "storybench"}
    for name, value in (
        ("serverSelectionTimeoutMS", SERVER_SELECTION_TIMEOUT_MS),
        ("connectTimeoutMS", CONNECT_TIMEOUT_MS),
        ("socketTimeoutMS", SOCKET_TIMEOUT_MS),
    ):
        if name.lower() not in options:
            kwargs[name] = value
    try:
        return MongoClient(uri, **kwargs)
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise StoreUnavailableError(
            f"cannot use the MongoDB URI {shown} (from {source}): {short_cause(exc)}. "
            "Fix: correct the URI (mongodb://HOST:PORT/ or mongodb+srv://HOST/)."
        ) from exc


def check_connection(client: MongoClient[dict[str, Any]], uri: str, source: str) -> None:
    """Ping (authenticating on the way); raise StoreUnavailableError with cause and fix."""
    shown = redact_uri(uri)
    try:
        client.admin.command("ping")
    except ConnectionFailure as exc:
        raise StoreUnavailableError(
            f"cannot reach the MongoDB at {shown} (from {source}): {short_cause(exc)}. "
            f"Fix: start that server or correct the URI; unset --mongo-uri and {URI_ENV} "
            "to use the embedded database."
        ) from exc
    except OperationFailure as exc:
        if exc.code in AUTH_FAILED_CODES or "auth" in str(exc).lower():
            raise StoreUnavailableError(
                f"the MongoDB at {shown} (from {source}) refused the credentials: "
                f"{short_cause(exc)}. Fix: check the user name, password and authSource "
                "in the URI."
            ) from exc
        raise StoreUnavailableError(
            f"the MongoDB at {shown} (from {source}) refused a ping: {short_cause(exc)}. "
            "Fix: check the URI's options and the user's roles."
        ) from exc
    except KeyError as exc:
        # nx-27017 answers saslStart without a payload: pymongo's SCRAM code raises KeyError.
        if not has_credentials(uri):
            raise
        raise StoreUnavailableError(
            f"the server at {shown} (from {source}) does not support authentication "
            "(the embedded nx-27017 server has none). Fix: remove the user name and password "
            "from the URI."
        ) from exc


def connect(uri: str, source: str) -> MongoClient[dict[str, Any]]:
    """A connected client, or StoreUnavailableError within about SERVER_SELECTION_TIMEOUT_MS."""
    client = make_client(uri, source)
    try:
        check_connection(client, uri, source)
    except BaseException:
        client.close()
        raise
    return client
