"""Write an output file whole or not at all.

`export` and `report` write files people open while a run may still be going: a temporary file
in the same folder, renamed over the target only once complete, means a reader never sees half a
file, a failure (disk full, a folder in the way) leaves nothing behind, and an existing file or
link is replaced rather than written through.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


class WriteError(Exception):
    """The file could not be written; the message names the file or folder and why."""


@contextmanager
def written_whole(
    out: Path,
    *,
    newline: str = "\n",
    errors: str = "strict",
    sync: bool = False,
    before_replace: Callable[[], None] | None = None,
) -> Iterator[TextIO]:
    """A text stream that becomes `out` when the block ends without an error.

    `sync` flushes the data to disk before the rename (exports meant to survive a crash);
    `before_replace` runs just before it and may raise to keep the target as it is.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise WriteError(f"cannot write in the folder {out.parent}: {exc.strerror or exc}") from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors=errors, newline=newline) as fh:
            yield fh
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual modes
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {out}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
