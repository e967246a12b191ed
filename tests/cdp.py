"""A tiny Chrome DevTools protocol client: headless Chromium, one page, commands and the events they cause."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websocket

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """The first Chromium-like executable on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Page:
    """One browser tab over its DevTools websocket: ``call`` a method, read the ``events`` received so far."""

    def __init__(self, ws_url: str, timeout: float = 60.0) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the next event ``method`` not yet seen (events are kept in ``events``)."""
        seen = sum(e["method"] == method for e in self.events)
        deadline = time.monotonic() + timeout
        while sum(e["method"] == method for e in self.events) <= seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            message = json.loads(self.ws.recv())
            if "method" in message:
                self.events.append(message)
        return [e for e in self.events if e["method"] == method][-1]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@contextmanager
def headless(browser: str, timeout: float = 30.0) -> Iterator[Page]:
    """Start ``browser`` headless with a throw-away profile and give its first tab."""
    with tempfile.TemporaryDirectory(prefix="trashlib-chromium-") as profile:
        proc = subprocess.Popen(
            [
                browser,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        page = None
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.is_file() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{browser} did not start (exit code {proc.poll()})")
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
                targets = json.loads(response.read())
            tab = next(t for t in targets if t.get("type") == "page")
            page = Page(tab["webSocketDebuggerUrl"])
            yield page
        finally:
            if page is not None:
                page.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
