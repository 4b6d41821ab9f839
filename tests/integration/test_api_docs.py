"""/docs and /redoc of both services work offline: the pages, their JavaScript, CSS and favicon are
served by the service itself and name no other host; a headless Chromium (where installed)
renders both pages with every request outside this machine blocked, and none is attempted."""

from __future__ import annotations

import re
import shutil
from urllib.parse import urlsplit

import httpx
import pytest

from reward_service.app import create_app as reward_app
from reward_service.settings import RewardSettings
from surrogate_service.app import create_app as surrogate_app
from surrogate_service.settings import SurrogateSettings

TOKEN = "t0ken"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(params=["reward", "surrogate"])
def service(request, serve, tiny_pipelines, tmp_path):
    if request.param == "reward":
        app = reward_app(RewardSettings(rewards=["jpeg_compressibility"], api_token=TOKEN))
        return {"url": serve(app), "title": "LaSRO reward service", "route": "/score", "protected": "/rewards"}
    app = surrogate_app(SurrogateSettings(base_model=str(tiny_pipelines["sd"]), learn=False, api_token=TOKEN,
                                          head_channels=16, checkpoint_dir=tmp_path / "ckpt"))
    return {"url": serve(app), "title": app.title, "route": "/grad", "protected": "/status"}


def _references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|url|spec-url)\s*[=:]\s*["']([^"']+)["']""", html)


def test_pages_and_assets_are_served_by_the_service_and_open(service):
    url = service["url"]
    assert httpx.get(f"{url}{service['protected']}").status_code == 401  # the token is on
    for page in ("/docs", "/redoc"):
        r = httpx.get(f"{url}{page}")  # open, like /openapi.json: the API's shape, no data
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        assert "default-src 'self'" in r.headers["content-security-policy"], page
        assert "http://" not in r.text and "https://" not in r.text and "//" not in r.text.replace("<!--", ""), page
        refs = _references(r.text)
        assert refs and all(ref.startswith("/") for ref in refs), (page, refs)
        for ref in refs:
            a = httpx.get(f"{url}{ref}")
            assert a.status_code == 200 and len(a.content) > 0, ref
            want = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
            suffix = "." + ref.rsplit(".", 1)[-1]
            assert a.headers["content-type"].startswith(want[suffix]), (ref, a.headers["content-type"])
    assert httpx.get(f"{url}/openapi.json").json()["info"]["title"] == service["title"]
    assert httpx.get(f"{url}/docs/assets/../../etc/passwd").status_code == 404
    assert httpx.get(f"{url}/docs/assets/core.py").status_code == 404  # only the listed assets
    assert httpx.get(f"{url}/docs/oauth2-redirect").status_code == 200


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")
def test_headless_chromium_renders_both_pages_without_leaving_the_machine(service):
    from playwright.sync_api import sync_playwright

    url, host = service["url"], urlsplit(service["url"]).netloc
    outside: list[str] = []
    refused: list[str] = []  # what the page's Content-Security-Policy kept the browser from fetching

    def gate(route) -> None:
        if urlsplit(route.request.url).netloc == host:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/*", gate)
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"{url}/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert service["title"] in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(f"text={service['route']}", timeout=30_000)  # the operations are listed
            page.goto(f"{url}/redoc")
            page.wait_for_selector("h1", timeout=30_000)
            assert service["title"] in page.inner_text("h1")
            page.wait_for_selector(f"text={service['route']}", timeout=30_000)
        finally:
            browser.close()
    assert outside == [], outside
    assert all("redoc.ly" in r or "redocly" in r for r in refused), refused  # ReDoc's vendor logo only
