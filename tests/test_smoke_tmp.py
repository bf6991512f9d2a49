from tests.conftest import ADMIN, AppClient


async def test_smoke(client: AppClient) -> None:
    r = await client.post("/files?name=a.txt", data=b"hello", headers=ADMIN)
    assert r.status == 201, await r.text()
    h = (await r.json())["hash"]
    r = await client.get(f"/files/{h}")
    assert await r.read() == b"hello"
    r = await client.get(f"/files/{h}", headers={"Range": "bytes=1-2"})
    assert r.status == 206 and await r.read() == b"el"
