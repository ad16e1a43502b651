"""Open a page in headless Chromium and report what went wrong, through the DevTools protocol.

Chromium is started with ``--remote-debugging-port=0`` (it writes the port it took to
``DevToolsActivePort`` in its profile folder); a WebSocket client (tornado's, a vitune
dependency already) enables the Runtime, Log, Network and Page domains, navigates to the page,
waits for its load event and collects: console errors and warnings, uncaught exceptions, log
entries of level error, every request that is not ``file:`` or ``data:`` (network use), and
each image's natural size.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((shutil.which(b) for b in BINARIES if shutil.which(b)), None)


@dataclass
class PageReport:
    errors: list[str] = field(default_factory=list)  # console errors/warnings, exceptions, error log entries
    requests: list[str] = field(default_factory=list)  # URLs fetched other than file: and data:
    images: list[dict] = field(default_factory=list)  # {"src", "complete", "width", "height", "attr_width", "attr_height"}
    title: str = ""
    text: str = ""


def open_page(path: Path, timeout_s: float = 60.0) -> PageReport:
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(f"no Chromium found (looked for {', '.join(BINARIES)}); .ci/run installs chromium-headless-shell")
    profile = tempfile.mkdtemp(prefix="vitune-chromium-")
    args = [binary, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank"]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = Path(profile) / "DevToolsActivePort", time.time() + timeout_s
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{binary} did not start its DevTools server (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        return asyncio.run(asyncio.wait_for(_inspect(page["webSocketDebuggerUrl"], path.resolve().as_uri()), timeout_s))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


IMAGES_JS = """JSON.stringify({title: document.title, text: document.body.innerText,
  images: Array.from(document.images).map(i => ({src: i.getAttribute('data-file') || i.src.slice(0, 40), complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, attr_width: +i.getAttribute('width'), attr_height: +i.getAttribute('height')}))})"""


async def _inspect(ws_url: str, url: str) -> PageReport:
    from tornado.websocket import websocket_connect

    report, ids = PageReport(), iter(range(1, 1_000_000))
    conn = await websocket_connect(ws_url, max_message_size=256 * 1024 * 1024)
    loaded = asyncio.Event()
    results: dict[int, dict] = {}

    async def send(method: str, params: dict | None = None) -> dict:
        n = next(ids)
        await conn.write_message(json.dumps({"id": n, "method": method, "params": params or {}}))
        while n not in results:
            await _pump()
        return results.pop(n)

    async def _pump():
        msg = await conn.read_message()
        if msg is None:
            raise RuntimeError("Chromium closed the DevTools connection")
        event = json.loads(msg)
        if "id" in event:
            results[event["id"]] = event
            return
        method, p = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            report.errors.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            report.errors.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}")
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            report.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            req = p["request"]["url"]
            if not req.startswith(("file:", "data:")):
                report.requests.append(req)
        elif method == "Page.loadEventFired":
            loaded.set()

    for domain in ("Runtime", "Log", "Network", "Page"):
        await send(f"{domain}.enable")
    await send("Page.navigate", {"url": url})
    while not loaded.is_set():
        await _pump()
    found = await send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True})
    doc = json.loads(found["result"]["result"]["value"])
    report.title, report.text, report.images = doc["title"], doc["text"], doc["images"]
    conn.close()
    return report
