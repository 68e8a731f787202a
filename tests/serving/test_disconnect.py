"""A non-streaming request whose client goes away is aborted as soon as the server hears of it (the
ASGI `http.disconnect`), not at the next poll: in virtual time the engine makes hundreds of tokens
in a quarter second, and they moved every other request's simulated times (server audit: ~330
tokens of a timing-only 70B after the client left)."""
from __future__ import annotations

import asyncio

import pytest

from api.generate import collect
from api.protocol import ApiError

FAIL_AFTER_S = 10.0
"""Only the old behaviour waits: a failing bound, not a timing (the abort itself takes no wait)."""


class _Ctx:
    def __init__(self) -> None:
        self.aborted: list = []

    def abort_all(self, reqs) -> None:
        self.aborted += reqs

    async def pace(self, delta) -> None:
        pass


class _Raw:
    """A request whose client has gone: the server says so on receive, and the poll never does."""

    async def receive(self) -> dict:
        return {"type": "http.disconnect"}

    async def is_disconnected(self) -> bool:
        return False


class _Params:
    logprobs = None


class _Req:
    params = _Params()


def test_a_client_gone_is_heard_without_polling():
    ctx, reqs = _Ctx(), [_Req(), _Req()]

    async def run():
        with pytest.raises(ApiError) as e:
            await asyncio.wait_for(collect(ctx, _Raw(), reqs, asyncio.Queue(), 2), FAIL_AFTER_S)
        return e.value

    err = asyncio.run(run())
    assert err.status == 499 and ctx.aborted == reqs
