"""The review page in a real browser: headless Chromium renders it offline.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no
port, no websocket library). Two independent witnesses watch for network traffic:

* the page's own requests, from DevTools ``Network.requestWillBeSent`` events (every
  request the page makes, whatever its scheme, blocked or not);
* the whole browser's connections, through an HTTP proxy the browser is pointed at
  (``--proxy-server``, loopback not bypassed) that records every connection it receives
  and answers none.

A control test loads a page that does reference the network and checks that both
witnesses see it, so the checks can fail.

Without Chromium (``apt-get install -y chromium``) the tests skip, except in CI: there
(``KSM_PLANNER_CI=1``, which ``.ci/run`` exports after installing Chromium when it is missing)
they fail, so that CI never passes without having opened the review in a browser.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests import procs

pytestmark = pytest.mark.browser

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")

#: Hosts Chromium itself contacts in the background, whatever page it shows (sign-in and
#: search preconnects, and the component updater's check, ``POST /service/update2/json``,
#: survive every switch that turns background networking off). The proxy witness ignores
#: them; the DevTools witness sees every request of the page, to any host.
BROWSER_OWN_HOSTS = (
    "accounts.google.com",
    "www.google.com",
    "clients2.google.com",
    "update.googleapis.com",
)
#: Set by ``.ci/run``: in CI a missing Chromium fails the browser tests instead of skipping them.
CI_ENV = "KSM_PLANNER_CI"


def _chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
MISSING = "headless Chromium is not installed (Debian: apt-get install -y chromium)"


def in_ci() -> bool:
    """Whether the tests run in CI (``.ci/run`` sets ``KSM_PLANNER_CI=1``)."""
    return os.environ.get(CI_ENV, "") not in ("", "0")


@pytest.fixture
def chromium() -> str:
    """The Chromium executable; skip without it, but fail in CI, where the check must run."""
    if CHROMIUM is None:
        if in_ci():
            pytest.fail(f"{MISSING}, and {CI_ENV}=1 requires the browser tests", pytrace=False)
        pytest.skip(MISSING)
    return CHROMIUM


needs_chromium = pytest.mark.usefixtures("chromium")


class RecordingProxy:
    """A TCP listener that records every connection (and its first bytes), answering none."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    first = "(no request line)"
                self.requests.append(first)
                # no answer: the request fails, nothing leaves the machine

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe."""

    def __init__(self, exe: str, profile: Path, proxy_port: int) -> None:
        cmd_r, self._cmd_w = os.pipe()  # we write commands; Chromium reads fd 3
        self._res_r, res_w = os.pipe()  # Chromium writes fd 4; we read
        args = [
            exe,
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--metrics-recording-only",
            "--disable-breakpad",
            "--disable-client-side-phishing-detection",
            "--disable-component-extensions-with-background-pages",
            "--disable-field-trial-config",
            "--disable-search-engine-choice-screen",
            "--no-pings",
            "--no-service-autorun",
            "--password-store=basic",
            "--use-mock-keychain",
            "--disable-features=NetworkTimeServiceQuerying,Translate,MediaRouter,"
            "OptimizationHints,OptimizationGuideModelDownloading,AutofillServerCommunication,"
            "CertificateTransparencyComponentUpdater,PrivacySandboxSettings4,PreconnectToSearch,"
            "AccountConsistency,DiceWebSigninInterception,SigninInterception",
            f"--user-data-dir={profile}",
            f"--proxy-server=http://127.0.0.1:{proxy_port}",
            "--proxy-bypass-list=<-loopback>",
            "about:blank",
        ]

        def fds() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(res_w, 4)

        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            pass_fds=(3, 4),
            start_new_session=True,
        )
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._res_r, selectors.EVENT_READ)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(timeout=left):
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its answer (events seen meanwhile are kept)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait for an event (or return one already seen)."""
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        deadline = time.monotonic() + timeout_s
        while True:
            ev = self._read_message(deadline)
            if "method" in ev:
                self.events.append(ev)
                if ev["method"] == method:
                    return ev

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", timeout_s=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait(timeout=10)
        self._sel.close()
        os.close(self._cmd_w)
        os.close(self._res_r)


def render_page(html: Path, screenshot: Path, tmp: Path) -> dict[str, Any]:
    """Open ``html`` in headless Chromium; return what the page did and drew."""
    assert CHROMIUM is not None
    proxy = RecordingProxy()
    browser = Chromium(CHROMIUM, tmp / "profile", proxy.port)
    try:
        targets = browser.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = browser.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )["sessionId"]
        for domain in ("Network", "Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.events.clear()
        browser.send("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        probe = browser.send(
            "Runtime.evaluate",
            {"expression": _PROBE, "returnByValue": True},
            session=session,
        )["result"]["value"]
        metrics = browser.send("Page.getLayoutMetrics", session=session)
        size = metrics["cssContentSize"]
        shot = browser.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
            session=session,
            timeout_s=60,
        )
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        time.sleep(0.5)  # let late requests (if any) reach the proxy
        requests = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        logs = [e["params"]["entry"] for e in browser.events if e.get("method") == "Log.entryAdded"]
        proxied = [r for r in proxy.requests if r and not _browser_own(r)]
        return {"probe": json.loads(probe), "requests": requests, "proxy": proxied, "logs": logs}
    finally:
        browser.close()
        proxy.close()


def _browser_own(request_line: str) -> bool:
    """Whether a proxied request line is Chromium's own background traffic."""
    parts = request_line.split()
    target = parts[1] if len(parts) > 1 else ""
    host = target.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return host in BROWSER_OWN_HOSTS


_PROBE = """JSON.stringify({
  charts: Array.from(document.querySelectorAll('svg.chart')).map(s => {
    const r = s.getBoundingClientRect();
    return {name: s.dataset.chart, width: r.width, height: r.height,
            shapes: s.querySelectorAll('path, use, rect, text').length};
  }),
  tables: document.querySelectorAll('table').length,
  sections: Array.from(document.querySelectorAll('main > section')).map(s => s.id),
  pageWidth: getComputedStyle(document.querySelector('.page') || document.body).maxWidth,
  scripts: document.scripts.length,
  title: document.title,
  overflow: (() => {
    // every table, plot, code block and key-figure row inside the page's text column; a
    // scrolling wrapper must not need to scroll (its content clipped at the column's edge)
    const page = document.querySelector('.page') || document.body;
    const r = page.getBoundingClientRect();
    const cs = getComputedStyle(page);
    const left = r.left + parseFloat(cs.paddingLeft) - 1;
    const right = r.right - parseFloat(cs.paddingRight) + 1;
    const out = [];
    document.querySelectorAll('table, svg.chart, pre, .keyfigs').forEach(el => {
      const b = el.getBoundingClientRect();
      if (b.width === 0 || el.closest('details:not([open])')) return;  // not drawn
      if (b.left < left || b.right > right) {
        out.push((el.id || el.dataset.chart || el.tagName) + ' spans ' + Math.round(b.left) +
                 '-' + Math.round(b.right) + ' px, column ' + Math.round(left) + '-' +
                 Math.round(right));
      }
    });
    document.querySelectorAll('.scroll').forEach(el => {
      if (el.closest('details:not([open])')) return;
      if (el.getBoundingClientRect().width > 0 && el.scrollWidth > el.clientWidth + 1) {
        const inner = el.firstElementChild;
        out.push((inner ? inner.id : 'scroll') + ' needs ' + el.scrollWidth + ' px of ' +
                 el.clientWidth);
      }
    });
    return out;
  })(),
})"""


def _pixels_near(png: Path, rgb: tuple[int, int, int], tol: int = 24) -> int:
    """How many pixels of a screenshot are within ``tol`` of a colour."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    diff = np.abs(img - np.asarray(rgb, dtype=np.int16)).max(axis=2)
    return int(np.count_nonzero(diff <= tol))


@needs_chromium
def test_control_page_with_network_references_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "leaky.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>leaky</title>"
        '<link rel="stylesheet" href="http://example.invalid/style.css"></head>'
        '<body><img src="http://example.invalid/pixel.png"></body></html>'
    )
    seen = render_page(page, tmp_path / "leaky.png", tmp_path)
    external = [u for u in seen["requests"] if not u.startswith("file:")]
    assert any("example.invalid" in u for u in external)
    assert any("example.invalid" in r for r in seen["proxy"])


@needs_chromium
def test_review_renders_offline_with_its_plots(small_inputs: Any, tmp_path: Path) -> None:
    from planner.report.render import write_report
    from planner.report.review import build_review

    doc = build_review(small_inputs)
    files = write_report(doc, tmp_path / "review")
    shot = tmp_path / "review.png"
    seen = render_page(files.html, shot, tmp_path)
    keep = os.environ.get("KSM_REPORT_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "review-small.png")

    # no network: the page asked for nothing but itself, the proxy saw no connection
    assert seen["requests"] == [files.html.resolve().as_uri()]
    assert seen["proxy"] == []
    assert not [e for e in seen["logs"] if e.get("level") == "error"], seen["logs"]

    probe = seen["probe"]
    assert probe["overflow"] == []  # no table or figure wider than the page
    assert probe["sections"] == [s.id for s in doc.sections]
    assert probe["scripts"] == 0
    assert probe["pageWidth"] == "928px"  # the inlined CSS applied (58rem)
    charts = {c["name"]: c for c in probe["charts"]}
    assert set(charts) == {f.name for f in doc.figures()}
    for c in charts.values():
        assert c["width"] > 300, c
        assert c["height"] > 80, c
        assert c["shapes"] > 20, c
    # the plots' colours are on the screenshot: green bars/areas and the blue fork share
    assert _pixels_near(shot, (0x00, 0x9E, 0x73)) > 5000
    assert _pixels_near(shot, (0x00, 0x72, 0xB2)) > 2000


@needs_chromium
def test_committed_example_renders_offline(tmp_path: Path) -> None:
    html = Path(__file__).resolve().parents[2] / "reports" / "django-preload" / "review.html"
    if not html.is_file():
        pytest.fail("reports/django-preload/review.html is missing: run reports/rebuild.py")
    shot = tmp_path / "django-preload.png"
    seen = render_page(html, shot, tmp_path)
    keep = os.environ.get("KSM_REPORT_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "review-django-preload.png")
    assert seen["requests"] == [html.as_uri()]
    assert seen["proxy"] == []
    assert not [e for e in seen["logs"] if e.get("level") == "error"], seen["logs"]
    probe = seen["probe"]
    assert probe["overflow"] == []  # no table or figure wider than the page
    assert len(probe["sections"]) == 13
    assert len(probe["charts"]) >= 8
    assert all(c["width"] > 300 and c["height"] > 80 and c["shapes"] > 20 for c in probe["charts"])
    assert _pixels_near(shot, (0x00, 0x9E, 0x73)) > 5000


@pytest.mark.parametrize(("ci", "outcome"), [("1", "error"), ("", "skipped")])
def test_without_chromium_ci_fails_where_a_developer_skips(
    ci: str, outcome: str, tmp_path: Path
) -> None:
    """The gate itself: no Chromium on PATH, run one browser test with and without CI set."""
    import sys

    env = {**os.environ, "PATH": str(tmp_path), CI_ENV: ci}  # an empty PATH: no Chromium
    run = procs.run(
        [
            sys.executable,
            "-m",
            "pytest",
            f"{__file__}::test_control_page_with_network_references_is_caught",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=--import-mode=importlib",
        ],
        env=env,
        timeout_s=120,
    )
    summary = run.stdout.strip().splitlines()[-1]
    assert f"1 {outcome}" in summary, run.stdout[-2000:]
    assert (run.returncode != 0) == (outcome == "error")
    if outcome == "error":
        assert f"{CI_ENV}=1 requires the browser tests" in run.stdout
