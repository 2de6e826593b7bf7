"""`smoothgrad serve` end to end: the page in headless Chromium, and the HTTP API.

Chromium is Debian's (`apt-get install chromium`; `make test` installs it when missing),
driven by Playwright's Python API. The server runs in a thread on a free loopback port.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from smoothgrad import images, models
from smoothgrad.cli import main
from smoothgrad.web import create_app

CHROMIUM = os.environ.get("SMOOTHGRAD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHELSEA = images.sample_path("chelsea")
DOCS = Path(__file__).resolve().parents[1] / "docs"
TIMEOUT_MS = 120_000  # generous: the suite shares two cores with other work


class Server:
    """The app on 127.0.0.1 and a free port, in a thread; `stop` ends it."""

    def __init__(self, max_upload: int = 64 * 1024) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="smoothgrad-serve-test-"))
        self.app = create_app(models.load("efficientnet_lite0"), model_name="efficientnet_lite0",
                              workdir=self.workdir, max_upload=max_upload,
                              allowed_hosts=["127.0.0.1"])
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        shutil.rmtree(self.workdir)

    def post(self, query: str, body: bytes | Iterator[bytes] = b"") -> tuple[int, Any]:
        """POST /api/explain; (status, the JSON error) or (200, the list of events)."""
        request = urllib.request.Request(f"{self.url}/api/explain?{query}", data=body,
                                         method="POST")
        if not isinstance(body, bytes):
            request.add_header("Transfer-Encoding", "chunked")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                lines = response.read().decode().splitlines()
                return 200, [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())["error"]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.stop()
    assert not running.thread.is_alive()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=FLAGS)
        yield launched
        launched.close()


def open_page(browser: Browser, server: Server) -> Page:
    page = browser.new_page(viewport={"width": 1200, "height": 780})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']")
    return page


def start(page: Page, path: Path, samples: int, *, strip: bool = True,
          method: str = "gradient") -> None:
    page.set_input_files("#file", str(path))
    page.select_option("#method", method)
    page.fill("#samples-n", str(samples))
    page.set_checked("#strip", strip)
    page.click("#run")


def test_page_explains_an_uploaded_photo_live(browser: Browser, server: Server,
                                              tmp_path: Path) -> None:
    page = open_page(browser, server)
    start(page, CHELSEA, 10, method="guided_backprop")
    page.wait_for_selector("body[data-state='done']")
    assert page.locator("#error").is_hidden()
    top5 = page.locator("#top5 li").all_inner_texts()
    assert len(top5) == 5 and top5[0].startswith("tiger cat")
    assert "Egyptian cat" in " ".join(top5)
    # the smoothed map was redrawn while samples accumulated, not only at the end
    assert int(page.get_attribute("#smoothed", "data-updates") or 0) > 2
    for panel in ("#input", "#plain", "#smoothed", "#stderr"):
        assert (page.get_attribute(panel, "src") or "").startswith("data:image/png;base64,")
    assert page.locator("#strip-maps figure").count() == 5
    assert "Done" in page.inner_text("#status")
    assert "relative error" in page.inner_text("#live")
    assert "flip rate" in page.inner_text("#live")
    link = page.get_attribute("#downloads a[download='smoothgrad-smoothed.npy']", "href")
    assert link
    with urllib.request.urlopen(server.url + link) as response:
        assert np.load(io.BytesIO(response.read())).shape == (3, 224, 224)
    page.screenshot(path=str(tmp_path / "page.jpg"), full_page=True, quality=80)
    if os.environ.get("SMOOTHGRAD_UPDATE_DOCS"):  # the README's picture
        shutil.copy(tmp_path / "page.jpg", DOCS / "serve.jpg")
    page.close()


def test_bad_files_show_a_message(browser: Browser, server: Server, tmp_path: Path) -> None:
    page = open_page(browser, server)
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    start(page, text, 10)
    expect(page.locator("#error")).to_contain_text("notes.jpg")
    expect(page.locator("#error")).to_contain_text("not an image")
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(CHELSEA.read_bytes()[:8000])
    start(page, truncated, 10)
    expect(page.locator("#error")).to_contain_text("half.jpg")
    assert page.get_attribute("body", "data-state") == "error"
    page.set_input_files("#file", str(images.sample_path("coffee")))  # 71 kB: over 64 kB
    expect(page.locator("#error")).to_have_text("'coffee.jpg' is 71 kB; the limit is 64 kB")
    page.close()


def test_a_second_page_waits_its_turn(browser: Browser, server: Server) -> None:
    first, second = open_page(browser, server), open_page(browser, server)
    start(first, CHELSEA, 400, strip=False)  # long enough to be running whatever the load
    first.wait_for_selector("body[data-state='running']")
    second.click("#samples button[data-sample='coffee']")  # a bundled photo, no upload
    second.fill("#samples-n", "10")
    second.set_checked("#strip", False)
    second.click("#run")
    expect(second.locator("#status")).to_contain_text("Waiting: 1 job ahead")
    assert second.get_attribute("body", "data-state") == "waiting"
    first.click("#stop")  # the first page gives up: the second one's turn comes
    first.wait_for_selector("body[data-state='stopped']")
    second.wait_for_selector("body[data-state='done']")
    assert second.locator("#top5 li").first.inner_text().startswith("espresso")
    first.close()
    second.close()


def test_closing_the_page_stops_its_job(browser: Browser, server: Server) -> None:
    page = open_page(browser, server)
    start(page, CHELSEA, 500)
    page.wait_for_function("document.getElementById('progress').value > 0")
    page.close()
    scheduler = server.app.state.scheduler
    deadline = time.monotonic() + 30
    while scheduler.running is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scheduler.running is None


def test_api_refuses_bad_uploads_with_one_line(server: Server, tmp_path: Path) -> None:
    # the size limit (64 kB here), declared up front or found while reading the body
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    connection.putrequest("POST", "/api/explain?filename=big.png")
    connection.putheader("Content-Length", str(10 * 2**30))
    connection.endheaders()  # nothing sent: the answer comes from the header alone
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == (
        "'big.png' is 10.0 GB or more; the limit is 64 kB")
    connection.close()
    chunks = iter([b"\0" * 50_000, b"\0" * 50_000])  # no Content-Length: chunked
    status, message = server.post("filename=big.png", chunks)
    assert status == 413 and message == "'big.png' is 98 kB or more; the limit is 64 kB"
    bomb = io.BytesIO()
    Image.new("1", (10_001, 10_001)).save(bomb, format="PNG")  # 1e8 pixels in ~12 kB
    status, message = server.post("filename=bomb.png", bomb.getvalue())
    assert status == 400 and "decompression bomb" in message and "bomb.png" in message
    status, message = server.post("sample=chelsea&noise=0.9")
    assert status == 400 and "σ must be between 0 and 50 %" in message
    status, message = server.post("sample=chelsea&method=lime")
    assert status == 400 and "unknown method" in message
    status, message = server.post("sample=chelsea&samples=ten")
    assert status == 400 and message.startswith("bad setting")
    status, message = server.post("")
    assert status == 400 and "no image" in message
    assert list(server.workdir.iterdir()) == []  # uploads are removed once decoded


def test_api_streams_events_in_order(server: Server) -> None:
    status, events = server.post("sample=coffee&samples=3&noise=0.1&strip=0&method=guided_backprop")
    assert status == 200
    kinds = [event["type"] for event in events]
    assert kinds[:6] == ["queued", "started", "input", "top5", "plain", "explained"]
    assert kinds[-2:] == ["stderr", "done"] and kinds.count("progress") == 3
    assert [e["done"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    files = events[-1]["files"]
    assert "smoothed.png" in files
    with urllib.request.urlopen(f"{server.url}/api/results/{events[-1]['id']}/smoothed.png") as r:
        assert r.headers["Content-Type"] == "image/png"
        width, height = Image.open(io.BytesIO(r.read())).size
        assert width == 224 and height > 224  # the map and, under it, the class it explains


def test_the_page_and_its_downloads_name_the_class_explained(browser: Browser,
                                                              server: Server) -> None:
    """Issue 23: every map explained the top prediction, and the page did not say which
    class its maps explain. A class can now be chosen; the page, its top-5 and the
    downloaded figures name it with its probability, and the maps are that class's."""
    import smoothgrad as sg

    model = server.app.state.scheduler.model
    x = model.preprocess(images.load(CHELSEA))
    with torch.no_grad():
        p = model(x).softmax(dim=1)[0]
    page = open_page(browser, server)
    page.fill("#target", "Egyptian cat")
    start(page, CHELSEA, 3, strip=False)
    page.wait_for_selector("body[data-state='done']")
    label = f"Egyptian cat (p = {float(p[285]):.3f})"
    assert page.inner_text("#explained") == f"Explaining {label}"
    assert page.locator("#top5 li.explained").all_inner_texts()[0].startswith("Egyptian cat")
    page.close()
    status, events = server.post("sample=chelsea&samples=2&strip=0&target=285")
    assert status == 200
    assert [e["label"] for e in events if e["type"] == "explained"] == [label]
    done = events[-1]
    with urllib.request.urlopen(f"{server.url}/api/results/{done['id']}/smoothed.npy") as r:
        smoothed = torch.from_numpy(np.load(io.BytesIO(r.read())))
    want = sg.smooth(model, x, target=285, samples=2, batch_size=1).attribution[0]
    torch.testing.assert_close(smoothed, want)
    with urllib.request.urlopen(f"{server.url}/api/results/{done['id']}/smoothed.png") as r:
        figure = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    assert np.array_equal(figure, sg.viz.captioned(sg.display.map_picture(want), label))
    status, events = server.post("sample=chelsea&samples=1&strip=0")  # the prediction
    top = next(e for e in events if e["type"] == "top5")["classes"][0]
    assert [e["label"] for e in events if e["type"] == "explained"] == [
        f"{top['label']} (p = {float(p.max()):.3f})"]
    status, message = server.post("sample=chelsea&target=tabby%20kat")
    assert status == 400 and "did you mean 'tabby'" in message


def test_serve_without_the_web_extra_says_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "smoothgrad.web", None)  # as if starlette were missing
    assert main(["serve", "--port", "8123"]) == 2
    assert "pip install 'smoothgrad[web]'" in capsys.readouterr().err


TINY = """
import numpy as np, torch
from torch import nn

def build():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 5))
    def preprocess(image):
        a = np.asarray(image.resize((16, 16)), dtype=np.float32) / 255
        return torch.from_numpy(a).permute(2, 0, 1)
    return model, preprocess
"""


def serving(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`smoothgrad serve` on a tiny model in a process, TMPDIR in `tmp_path`; the process and
    the URL of its banner, once the page answers."""
    (tmp_path / "sg_serve_tiny.py").write_text(TINY)
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "smoothgrad", "serve", "--model",
         f"{tmp_path / 'sg_serve_tiny.py'}:build", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    banner = process.stdout.readline()
    assert banner.startswith("smoothgrad serve: http://127.0.0.1:"), (
        banner, process.stderr.read() if process.poll() is not None and process.stderr else "")
    url = banner.split()[2]
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}api/info", timeout=5) as response:
                assert json.loads(response.read())["model"].endswith("sg_serve_tiny.py:build")
                return process, url
        except urllib.error.URLError:
            assert time.monotonic() < deadline, "the server did not answer"
            time.sleep(0.1)


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_serve_leaves_nothing_behind(tmp_path: Path, stop: str) -> None:
    """The real command: it binds to loopback, and its temporary folder goes when it is
    stopped: on Ctrl-C, and (issue 23) on SIGTERM (kill, systemd, docker stop) and SIGHUP,
    which left `smoothgrad-serve-*` behind."""
    process, _ = serving(tmp_path, "--port", "0")
    try:
        assert [p.name.startswith("smoothgrad-serve-") for p in (tmp_path / "tmp").iterdir()
                ] == [True]
        process.send_signal(getattr(signal, stop))
        assert process.wait(60) == 0
    finally:
        process.kill()
        _, error = process.communicate()
    assert list((tmp_path / "tmp").iterdir()) == [] and error == ""


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    """Issue 23: the URL was printed as if serving, then uvicorn's "[Errno 98]", exit 3.
    Now one line naming --port, exit 2, nothing announced; --port 0 takes a free port and
    prints it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "smoothgrad", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"smoothgrad: error: --port {port}: in use on 127.0.0.1 (another "
                           "server?); choose another, or 0 for any free port\n")
    process, url = serving(tmp_path, "--port", "0")
    try:
        assert int(url.rsplit(":", 1)[1].strip("/")) > 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
