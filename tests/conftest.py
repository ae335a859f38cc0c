"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from tests.support.servers import find_free_port


@pytest.fixture
def free_port() -> int:
    return find_free_port()
