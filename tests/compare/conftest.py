"""Compare test fixtures: the leaderboard tests' shared in-memory database (every command of a
test opens it) and their guard against touching the developer's database."""

from __future__ import annotations

from tests.leaderboard.conftest import _no_user_database, shared

__all__ = ["_no_user_database", "shared"]
