"""The demo takes no uploads (issue 25, item 7): `POST /gradio_api/upload` writes no file, from any
origin, and a big body is refused without being stored."""
import os
from pathlib import Path

import httpx
import pytest

from test_demo import _free_port, tiny_model


@pytest.fixture(scope="module")
def demo_url():
    from diffusionlm.demo import launch

    app, url = launch(tiny_model(), port=_free_port(), block=False)
    try:
        yield app, url.rstrip("/")
    finally:
        app.close()


def _files(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1", "https://evil.example"])
def test_upload_writes_no_file_from_any_origin(demo_url, origin):
    from gradio.utils import get_upload_folder

    app, url = demo_url
    folder = Path(get_upload_folder())
    before = _files(folder)
    headers = {"Origin": origin} if origin else {}
    body = os.urandom(1 << 20)
    r = httpx.post(f"{url}/gradio_api/upload", files={"files": ("x.bin", body)}, headers=headers, timeout=30)
    assert r.status_code in (403, 404, 405, 413), (r.status_code, r.text[:200])
    assert _files(folder) == before
    assert httpx.get(f"{url}/gradio_api/info", timeout=30).status_code == 200  # the demo itself still serves
