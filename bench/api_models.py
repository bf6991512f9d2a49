"""Cost of the API models on the hot path, against `json.dumps` of dicts (docs/api-models.md).

python -m bench.api_models
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

from filecask.api.models import FileInfo, FileList, Manifest, UserUpdate, adapter, validate
from filecask.archives.manifest import parse_manifest

H = "a" * 64


def main() -> None:
    files = [
        {
            "hash": H,
            "size": 1234 + i,
            "name": f"name{i}.txt",
            "content_type": "text/plain",
            "uploaded_at": "2025-01-01T00:00:00+00:00",
            "url": f"http://h/files/{H}",
        }
        for i in range(1000)
    ]
    listing = {"files": files, "next_cursor": None}
    one = files[0]
    many, single = adapter(FileList), adapter(FileInfo)
    entries = [{"hash": f"{i:064x}", "path": f"d/{i}.txt"} for i in range(10_000)]
    manifest = {"name": "b.zip", "files": entries}
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "listing of 1000, json.dumps": (lambda: json.dumps(listing).encode(), 50),
        "listing of 1000, FileList dump_json": (lambda: many.dump_json(listing), 50),
        "upload answer, json.dumps": (lambda: json.dumps(one).encode(), 20_000),
        "upload answer, FileInfo dump_json": (lambda: single.dump_json(one), 20_000),
        "user PATCH, validate(UserUpdate)": (
            lambda: validate(UserUpdate, {"quota": "10G"}),
            20_000,
        ),
        "10k-entry manifest, Manifest.model_validate": (
            lambda: Manifest.model_validate(manifest),
            5,
        ),
        "10k-entry manifest, parse_manifest": (
            lambda: parse_manifest(manifest, max_bytes=1 << 30),
            5,
        ),
    }
    for name, (run, number) in cases.items():
        best = min(timeit.repeat(run, number=number, repeat=5)) / number
        print(f"{name:48s} {best * 1e6:10.1f} us")


if __name__ == "__main__":
    main()
