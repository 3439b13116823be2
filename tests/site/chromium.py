"""A headless Chromium driven over the DevTools protocol (CDP) with ``websocket-client``: just what the browser test
needs (navigate, evaluate, collect console errors, screenshot). Debian's ``chromium`` package; none is downloaded."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def version(binary: str) -> str:
    return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()


class Chromium:
    """One headless browser with one page; ``errors`` collects console errors and uncaught exceptions."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        import websocket  # websocket-client (the test extra)

        self.profile = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}",
             "--allow-file-access-from-files", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._port()
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
                page = next(t for t in targets if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        self.events: list[dict] = []
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method)

    def _port(self) -> int:
        deadline = time.monotonic() + 60
        for line in self.process.stderr:
            if "DevTools listening on ws://" in line:
                return int(line.split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
            if time.monotonic() > deadline:
                break
        raise RuntimeError("chromium did not start its DevTools server")

    def call(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        self.events.append(message)
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append(params["entry"].get("text", ""))

    def open(self, url: str, timeout: float = 60) -> float:
        """Navigate and wait for the load event; return the seconds it took."""
        self.events.clear()
        start = time.monotonic()
        self.call("Page.navigate", url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() - start > timeout:
                raise TimeoutError(url)
            self._event(json.loads(self.socket.recv()))
        return time.monotonic() - start

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        """Poll until ``expression`` is true in the page (what a script draws after the load event)."""
        deadline = time.monotonic() + timeout
        while not self.eval(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(expression)
            time.sleep(0.1)

    def screenshot(self, path, full_page: bool = False) -> None:
        params = {}
        if full_page:
            height = self.eval("document.documentElement.scrollHeight")
            width = self.eval("document.documentElement.scrollWidth")
            params = {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}
        data = self.call("Page.captureScreenshot", format="png", **params)["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.profile.cleanup()


if __name__ == "__main__":  # python -m tests.site.chromium PAGE.html OUT.png [--full]: a screenshot
    import sys
    from pathlib import Path

    browser = Chromium(find_chromium() or sys.exit("no chromium on PATH"))
    try:
        seconds = browser.open(Path(sys.argv[1]).resolve().as_uri())
        browser.wait_for("document.body.dataset.charts === 'drawn'")  # the charts draw after the load event
        browser.screenshot(sys.argv[2], full_page="--full" in sys.argv)
        print(f"{version(find_chromium())}: {sys.argv[1]} loaded in {seconds:.2f} s, console errors: {browser.errors}")
    finally:
        browser.close()
