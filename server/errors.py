"""The server's exceptions.

    ServerError                 base of everything below
    ├── ServerConfigError             the config file or a model file is unusable (the CLI exits 2)
    └── ModelLoadError          llama.cpp could not load a model that passed validation

Messages are written for the person running the server: they name the file, the model, the
field and what would be valid, so the CLI prints them as they are, without a traceback.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base class of StoryBench server errors."""


class ServerConfigError(ServerError):
    """The configuration (or a file it points at) is invalid."""


class ModelLoadError(ServerError):
    """llama.cpp failed to load a model."""
