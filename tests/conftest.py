"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.servers import RunningServer, find_free_port


@pytest.fixture
def free_port() -> int:
    return find_free_port()


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    """A client for the `server` fixture of the requesting test's folder (serial or batched)."""
    with httpx.Client(base_url=server.root, timeout=120) as client:
        yield client


@pytest.fixture
def openai_client(server: RunningServer) -> Any:
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
