"""The server's exception: a configuration (or a model file it names) that cannot be served.

Messages are written for the person running the server: they name the file, the model, the
field and what would be valid, so the CLI prints them as they are, without a traceback (and
exits 2). A model that passed validation but that llama.cpp cannot load is reported by
`/health` and the CLI from llama.cpp's own error (server/app.py).
"""

from __future__ import annotations


class ServerConfigError(Exception):
    """The configuration (or a file it points at) is invalid."""
