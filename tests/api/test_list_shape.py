"""The seed's shape of the file list: ``{"files": [...], "next_cursor"}``, each file with its
``type``; ``items`` stays one release as a deprecated copy of ``files``."""

from __future__ import annotations

import dataclasses

from tests.app_fixtures import MakeClient
from tests.pipeline.test_local_pipeline import png_bytes
from tusserver.api.files import file_json
from tusserver.app import RUNTIME

from .helpers import api_client, token
from .test_form_upload import form, post_form, wait_done


async def test_files_list_has_files_and_each_file_a_type(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    mark = token("shape")
    # Declared wrongly on purpose: `type` is what the pipeline detected, not the claim.
    entries = await post_form(
        client, form((f"{mark} a.png", png_bytes(2000), "application/octet-stream"))
    )
    info = await wait_done(client, entries[0]["file_id"])
    assert info["status"] == "committed", info
    assert info["type"] == info["detected_type"] == "image/png"
    assert info["declared_type"] == "application/octet-stream"
    for path in ("/api/v1/files", "/files"):
        resp = await client.get(path, params={"q": mark})
        assert resp.status == 200
        body = await resp.json()
        assert set(body) == {"files", "next_cursor", "items"}
        assert body["next_cursor"] is None
        (listed,) = body["files"]
        assert {"id": listed["id"], "name": listed["name"], "type": listed["type"]} == {
            "id": info["id"],
            "name": f"{mark} a.png",
            "type": "image/png",
        }
        assert listed["detected_type"] == "image/png" and listed["size"] == info["size"]
        assert body["items"] == body["files"]  # the deprecated alias


async def test_type_is_the_declared_one_until_detected(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    mark = token("pending")
    entries = await post_form(client, form((f"{mark}.txt", b"words\n" * 10, "text/plain")))
    record = await client.server.app[RUNTIME].files.get(entries[0]["file_id"])
    assert record is not None
    undetected = dataclasses.replace(record, detected_type=None)
    assert file_json(undetected)["type"] == "text/plain"
    unknown = dataclasses.replace(record, detected_type=None, declared_type=None)
    assert file_json(unknown)["type"] is None
