"""The store's exceptions. The CLI catches `StoreError` once and prints its message.

StoreError                  anything the store cannot do; the message names the fix
├── StoreUnavailableError   the database cannot be reached, or stopped answering
├── EmbeddedServerError     the embedded nx-27017 server could not be started or reused
└── ExportError             an export could not be written (e.g. the file exists)
"""

from __future__ import annotations


class StoreError(Exception):
    """The results store failed; `str(err)` says what happened and what to do next."""


class StoreUnavailableError(StoreError):
    """The database is unreachable, refuses us, or stopped answering mid-run."""


class EmbeddedServerError(StoreError):
    """The embedded nx-27017 server could not be started, reused or stopped."""


class ExportError(StoreError):
    """An export was refused (existing file) or could not be written."""
