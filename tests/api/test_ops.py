"""/healthz and /readyz: unauthenticated, cheap, and /readyz tells the truth."""

from __future__ import annotations

import os

import pytest

from filecask.services import SERVICES
from filecask.settings import Settings
from tests.conftest import AppClient, assert_problem

PROBLEM_JSON = "application/problem+json"


async def test_healthz(client: AppClient) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {"status": "ok"}


async def test_healthz_head(client: AppClient) -> None:
    response = await client.head("/healthz")
    assert response.status == 200


async def test_readyz(client: AppClient) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready"}


@pytest.mark.local_only  # the store directory exists only with storage on disk
async def test_readyz_is_503_without_the_store_dir(client: AppClient, settings: Settings) -> None:
    moved = settings.data_dir / "store-moved-away"
    os.rename(settings.store_dir, moved)
    try:
        response = await client.get("/readyz")
        assert response.status == 503
        assert response.content_type == PROBLEM_JSON
        body = await response.json(content_type=PROBLEM_JSON)
        assert_problem(body, 503, "service-unavailable")
        assert "blob store" in body["detail"]
        # Liveness is a different question: the process still answers.
        assert (await client.get("/healthz")).status == 200
    finally:
        os.rename(moved, settings.store_dir)
    assert (await client.get("/readyz")).status == 200


async def test_readyz_is_503_without_a_writable_tmp_dir(
    client: AppClient, settings: Settings
) -> None:
    moved = settings.data_dir / "tmp-moved-away"
    os.rename(settings.tmp_dir, moved)
    try:
        response = await client.get("/readyz")
        assert response.status == 503
        assert_problem(await response.json(content_type=PROBLEM_JSON), 503, "service-unavailable")
    finally:
        os.rename(moved, settings.tmp_dir)
    assert (await client.get("/readyz")).status == 200


async def test_readyz_is_503_when_the_metadata_store_is_closed(
    client: AppClient, settings: Settings
) -> None:
    services = client.app[SERVICES]
    await services.meta.close()
    try:
        response = await client.get("/readyz")
        assert response.status == 503
        body = await response.json(content_type=PROBLEM_JSON)
        assert_problem(body, 503, "service-unavailable")
        assert "metadata store" in body["detail"]
    finally:
        await services.meta.open()
    assert (await client.get("/readyz")).status == 200


async def test_probes_need_no_credentials(client: AppClient) -> None:
    bogus = {"Authorization": "Basic !!!"}
    assert (await client.get("/healthz", headers=bogus)).status == 200
    assert (await client.get("/readyz", headers=bogus)).status == 200
