"""Options every command that reads or writes the store takes, defined once.

In a module of their own because `evaluator/cli.py` registers commands that live in other
packages (`judge`, `report`): those import these options, and importing them from
`evaluator/cli.py` would be circular.
"""

from __future__ import annotations

import click

from evaluator.store.connect import DEFAULT_DB_NAME, URI_ENV

mongo_option = click.option(
    "--mongo-uri",
    envvar=URI_ENV,
    default=None,
    help="MongoDB URI (also STORYBENCH_MONGO_URI). Default: the embedded MongoDB-wire server "
    "(nx-27017) with data under ~/.local/share/storybench (STORYBENCH_DATA_DIR).",
)
db_option = click.option("--db", "db_name", default=DEFAULT_DB_NAME, show_default=True, help="Database name.")
