"""Test helper: load a local HTML file in headless Chromium with the network off, and look at it.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on
its fd 3, answers and events on its fd 4, one JSON message per NUL-terminated chunk), not over a
websocket and not with ``--dump-dom``:

* a pipe needs no port (nothing to race for or leak on a shared machine) and no client package,
  and works inside a network namespace with no interface up, which is how the network is turned
  off when we may (root: ``unshare --net``); elsewhere ``Network.emulateNetworkConditions``
  offline does it inside the browser;
* the protocol reports what ``--dump-dom`` cannot: console messages and uncaught exceptions
  (``Runtime``), browser-side errors such as a failed load (``Log``), and every request the page
  makes (``Network``), so a test can assert there were none and no errors;
* the page is inspected live (``Runtime.evaluate`` until the charts are drawn, not after a fixed
  sleep) and the screenshot is taken of the same page (``Page.captureScreenshot``).

``load(path, expression)`` returns a :class:`PageResult`: the value of ``expression`` once it is
truthy (or the last value at the timeout), the console errors, exceptions and log errors, the URLs
requested other than ``file:``/``data:``/``blob:``, and the PNG bytes of a full-page screenshot.
Chromium runs with a fresh ``--user-data-dir`` and the flags that keep it off the network
(background networking, component updates, sync, QUIC); only the process started here is killed.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def find_chromium() -> str | None:
    """Debian's ``chromium`` (or ``$COWPROF_CHROMIUM``), else None."""
    for cand in (os.environ.get("COWPROF_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def why_no_chromium() -> str:
    ci = " (CI=true: scripts/test installs it through ensure_test_services in scripts/_env.sh)"
    return f"headless Chromium not found: apt-get install chromium{ci}"


def _can_unshare_net() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


@dataclasses.dataclass
class PageResult:
    value: Any
    console_errors: list[str]
    exceptions: list[str]
    log_errors: list[str]
    requests: list[str]
    screenshot: bytes
    network_off: str  # how: "network namespace" and/or "offline emulation"

    @property
    def errors(self) -> list[str]:
        return self.console_errors + self.exceptions + self.log_errors


class _Pipe:
    """The DevTools protocol over Chromium's fds 3 (to it) and 4 (from it)."""

    def __init__(self, to_browser: int, from_browser: int, proc: subprocess.Popen[bytes]) -> None:
        self.w, self.r, self.proc = to_browser, from_browser, proc
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.r, selectors.EVENT_READ)

    log_path: str | None = None

    def log_tail(self) -> str:
        try:
            with open(self.log_path or "", "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return "-"

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                raise TimeoutError("no answer from Chromium")
            data = os.read(self.r, 1 << 20)
            if not data:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit status {self.proc.poll()}); "
                                   f"its output: {self.log_tail()}")
            self.buf += data
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.w, data):]
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self.events.append(answer)

    def wait_event(self, method: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev["method"] == method:
                return ev
        while True:
            ev = self._read_message(deadline)
            if "method" in ev:
                self.events.append(ev)
                if ev["method"] == method:
                    return ev


def _describe(args: list[dict[str, Any]]) -> str:
    return " ".join(str(a.get("value", a.get("description", a.get("type")))) for a in args)


def load(path: str | os.PathLike[str], expression: str, *, timeout: float = 60.0,
         chromium: str | None = None) -> PageResult:
    """Open ``path`` (a local file), wait until ``expression`` (JavaScript) is truthy, screenshot."""
    exe = chromium or find_chromium()
    if exe is None:
        raise RuntimeError(why_no_chromium())
    url = Path(path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="cowprof-chromium-")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    how = ["offline emulation"]
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
    if _can_unshare_net():
        cmd = ["unshare", "--net", "--", *cmd]
        how.insert(0, "network namespace")

    def child_fds() -> None:  # Chromium reads commands from fd 3, writes to fd 4
        a, b = os.dup(to_r), os.dup(from_w)  # above 4 first: either may be 3 or 4 itself
        os.dup2(a, 3)  # dup2 makes them inheritable; every other fd of ours is closed on exec
        os.dup2(b, 4)

    log = open(os.path.join(profile, "chromium.log"), "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=child_fds, close_fds=False)
    os.close(to_r)
    os.close(from_w)
    pipe = _Pipe(to_w, from_r, proc)
    pipe.log_path = log.name
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1}, session=session)
        pipe.events.clear()
        pipe.call("Page.navigate", {"url": url}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout)
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            res = pipe.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
            value = res.get("result", {}).get("value")
            if value and (not isinstance(value, dict) or value.get("ready", True)):
                break
            time.sleep(0.1)
        metrics = pipe.call("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = pipe.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}},
            session=session)
        # events that arrived during the last calls
        pipe.call("Runtime.evaluate", {"expression": "1"}, session=session)
        console, exceptions, logs, requests = [], [], [], []
        for ev in pipe.events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                console.append(_describe(p.get("args", [])))
            elif ev["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                exceptions.append(str(d.get("exception", {}).get("description") or d.get("text")))
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                logs.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())
            elif ev["method"] == "Network.requestWillBeSent":
                u = p.get("request", {}).get("url", "")
                if not u.startswith(LOCAL_SCHEMES):
                    requests.append(u)
        return PageResult(value=value, console_errors=console, exceptions=exceptions, log_errors=logs,
                          requests=requests, screenshot=base64.b64decode(shot["data"]),
                          network_off=" + ".join(how))
    finally:
        try:
            pipe.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        pipe.sel.close()
        os.close(to_w)
        os.close(from_r)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":  # python tests/browser.py report.html: what a test would see
    r = load(sys.argv[1], "document.querySelectorAll('svg').length")
    print(json.dumps({k: v for k, v in dataclasses.asdict(r).items() if k != "screenshot"}, indent=2))
