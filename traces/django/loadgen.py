"""A bounded, seeded HTTP load driver for the sample site (loopback only).

Two phases, both with a request plan fixed up front by the seed:

* :func:`warm_up`: ``requests`` requests from ``threads`` closed-loop threads, as fast as
  the site answers;
* :class:`OpenLoop`: arrivals at a fixed ``rate_per_s`` for at most ``max_duration_s``
  (or until :meth:`OpenLoop.stop`), at most ``max_in_flight`` at once; arrivals that
  find every slot busy are dropped and counted, so the driver never queues without bound.

Every request opens a new connection (gunicorn sync workers close it after one
response). Each driver thread is one visitor with its own cookies (sessions); admin pages
use one shared staff session that logs in once. The driver refuses any URL whose host
does not resolve to a loopback address.

Run on its own against a running site::

    .venv/bin/python traces/django/loadgen.py --url http://127.0.0.1:8000 \\
        --warmup 3000 --rate 30 --duration 60
"""

from __future__ import annotations

import argparse
import http.client
import http.cookiejar
import ipaddress
import json
import random
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

DEFAULT_SEED = 42
ADMIN_USER = "admin"
ADMIN_PASSWORD = "ksm-sample-admin"  # the seed command's default; loopback sample data only
REQUEST_TIMEOUT_S = 30.0

#: The request mix: (kind, weight in percent).
MIX: tuple[tuple[str, int], ...] = (
    ("home", 10),
    ("blog_list", 8),
    ("tag", 6),
    ("post", 15),
    ("author", 5),
    ("api_posts", 4),
    ("api_post", 4),
    ("categories", 4),
    ("category", 8),
    ("product", 12),
    ("search", 7),
    ("cart", 3),
    ("api_products", 4),
    ("api_order", 3),
    ("api_stats", 2),
    ("admin", 5),
)
SEARCH_TERMS = (
    "oak",
    "steel",
    "wireless",
    "lamp",
    "kernel",
    "memory",
    "compact",
    "desk",
    "x",
    "cache",
)
SORTS = ("name", "price", "-price", "new", "stock")
ADMIN_PAGES = (
    "/admin/",
    "/admin/blog/post/?p={page}",
    "/admin/blog/comment/?p={page}",
    "/admin/shop/order/?status=shipped&p={page}",
    "/admin/shop/product/?q=oak",
    "/admin/blog/post/{post}/change/",
    "/admin/shop/order/{order}/change/",
    "/admin/shop/product/{product}/change/",
)


class LoadError(RuntimeError):
    """The site cannot be driven (not loopback, not answering, login failed)."""


def require_loopback(url: str) -> None:
    """Raise :class:`LoadError` unless every address of ``url``'s host is a loopback address."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LoadError(f"{url!r} is not an http:// URL")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LoadError(f"cannot resolve {parts.hostname!r}: {exc}") from exc
    addrs = {ipaddress.ip_address(info[4][0]) for info in infos}
    if not addrs or not all(a.is_loopback for a in addrs):
        raise LoadError(
            f"{parts.hostname} is not a loopback address; this driver only targets loopback"
        )


@dataclass(frozen=True)
class Catalog:
    """What the request mix needs to know about the seeded data (from ``/api/stats/``)."""

    counts: dict[str, int]
    tags: tuple[str, ...]
    authors: tuple[str, ...]
    categories: tuple[str, ...]

    @classmethod
    def fetch(cls, base_url: str) -> Catalog:
        """Ask the site for its row counts and slugs."""
        with urllib.request.urlopen(base_url + "/api/stats/", timeout=REQUEST_TIMEOUT_S) as resp:
            data = json.load(resp)
        slugs = data["slugs"]
        return cls(
            counts={k: int(v) for k, v in data["counts"].items()},
            tags=tuple(slugs["tags"]),
            authors=tuple(slugs["authors"]),
            categories=tuple(slugs["categories"]),
        )


@dataclass(frozen=True)
class PlannedRequest:
    """One request of the plan: its kind and path."""

    kind: str
    path: str


def _popular(rng: random.Random, n: int) -> int:
    """An id in 1..n, skewed towards low ids (popular items are requested more often)."""
    return min(n, int(n * rng.random() ** 2) + 1)


def plan_requests(catalog: Catalog, n: int, *, seed: int) -> list[PlannedRequest]:
    """The first ``n`` requests of the mix for ``seed`` (the same seed gives the same plan)."""
    rng = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    c = catalog.counts
    builders: dict[str, Callable[[], str]] = {
        "home": lambda: "/",
        "blog_list": lambda: f"/blog/?page={_popular(rng, max(1, c['posts'] // 20))}",
        "tag": lambda: f"/blog/tag/{rng.choice(catalog.tags)}/?page={rng.randint(1, 3)}",
        "post": lambda: f"/blog/post/{_popular(rng, c['posts'])}/",
        "author": lambda: f"/blog/author/{rng.choice(catalog.authors)}/",
        "api_posts": lambda: (
            f"/api/posts/?page={rng.randint(1, 10)}"
            + (f"&tag={rng.choice(catalog.tags)}" if rng.random() < 0.5 else "")
        ),
        "api_post": lambda: f"/api/posts/{_popular(rng, c['posts'])}/",
        "categories": lambda: "/shop/",
        "category": lambda: (
            f"/shop/category/{rng.choice(catalog.categories)}/"
            f"?sort={rng.choice(SORTS)}&page={rng.randint(1, 3)}"
        ),
        "product": lambda: f"/shop/product/{_popular(rng, c['products'])}/",
        "search": lambda: (
            "/shop/search/?" + urllib.parse.urlencode({"q": rng.choice(SEARCH_TERMS)})
        ),
        "cart": lambda: "/shop/cart/",
        "api_products": lambda: (
            f"/api/products/?category={rng.choice(catalog.categories)}"
            f"&sort={rng.choice(SORTS)}&page={rng.randint(1, 2)}"
        ),
        "api_order": lambda: f"/api/orders/{rng.randint(1, c['orders'])}/",
        "api_stats": lambda: "/api/stats/",
        "admin": lambda: rng.choice(ADMIN_PAGES).format(
            page=rng.randint(1, 5),
            post=_popular(rng, c["posts"]),
            order=rng.randint(1, c["orders"]),
            product=_popular(rng, c["products"]),
        ),
    }
    plan = []
    for kind in rng.choices(kinds, weights, k=n):
        plan.append(PlannedRequest(kind, builders[kind]()))
    return plan


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(jar: http.cookiejar.CookieJar) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())


def admin_opener(
    base_url: str, *, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD
) -> urllib.request.OpenerDirector:
    """Log in to the admin once and return an opener that carries the staff session."""
    jar = http.cookiejar.CookieJar()
    opener = _opener(jar)
    with opener.open(base_url + "/admin/login/", timeout=REQUEST_TIMEOUT_S) as resp:
        page = resp.read().decode()
    m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    if m is None:
        raise LoadError("the admin login page has no CSRF token")
    form = urllib.parse.urlencode(
        {
            "username": user,
            "password": password,
            "csrfmiddlewaretoken": m.group(1),
            "next": "/admin/",
        }
    ).encode()
    try:
        with opener.open(base_url + "/admin/login/", data=form, timeout=REQUEST_TIMEOUT_S) as resp:
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    if status != 302 or not any(c.name == "sessionid" for c in jar):
        raise LoadError(f"admin login failed (HTTP {status})")
    return opener


@dataclass
class Results:
    """Per-request samples of one phase."""

    started_monotonic: float
    kinds: list[str] = field(default_factory=list)
    start_s: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, t0: float, t1: float, status: int) -> None:
        with self._lock:
            self.kinds.append(kind)
            self.start_s.append(t0 - self.started_monotonic)
            self.latency_ms.append((t1 - t0) * 1e3)
            self.status.append(status)

    def summary(self) -> dict[str, Any]:
        """Counts, achieved rate, latency percentiles (ms) and status classes."""
        with self._lock:
            lat = np.asarray(self.latency_ms)
            start = np.asarray(self.start_s)
            status = list(self.status)
        n = int(lat.size)
        span_s = float(start.max() - start.min()) if n > 1 else 0.0
        p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if n else (np.nan,) * 3
        classes = Counter(f"{s // 100}xx" if s else "conn_error" for s in status)
        return {
            "requests": n,
            "errors": sum(v for k, v in classes.items() if k not in ("2xx", "3xx")),
            "dropped": self.dropped,
            "rate_per_s": round(n / span_s, 1) if span_s else None,
            "latency_ms": {
                "p50": round(float(p50), 1),
                "p90": round(float(p90), 1),
                "p99": round(float(p99), 1),
            },
            "status": dict(sorted(classes.items())),
        }


class Driver:
    """Sends planned requests; one cookie jar per thread, one shared admin session."""

    def __init__(self, base_url: str) -> None:
        require_loopback(base_url)
        self.base_url = base_url.rstrip("/")
        self._local = threading.local()
        self._admin: urllib.request.OpenerDirector | None = None
        self._admin_lock = threading.Lock()

    def _visitor(self) -> urllib.request.OpenerDirector:
        opener: urllib.request.OpenerDirector | None = getattr(self._local, "opener", None)
        if opener is None:
            opener = self._local.opener = _opener(http.cookiejar.CookieJar())
        return opener

    def _staff(self) -> urllib.request.OpenerDirector:
        with self._admin_lock:
            if self._admin is None:
                self._admin = admin_opener(self.base_url)
            return self._admin

    def send(self, req: PlannedRequest, results: Results) -> None:
        """Send one request and record its latency and status (0: no HTTP answer)."""
        opener = self._staff() if req.kind == "admin" else self._visitor()
        t0 = time.monotonic()
        try:
            with opener.open(self.base_url + req.path, timeout=REQUEST_TIMEOUT_S) as resp:
                resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            status = err.code
            err.close()
        except (OSError, http.client.HTTPException):
            status = 0
        results.add(req.kind, t0, time.monotonic(), status)


def wait_ready(
    base_url: str, *, timeout_s: float = 60.0, alive: Callable[[], bool] | None = None
) -> None:
    """Wait until ``/api/stats/`` answers 200 (and ``alive()`` stays true)."""
    require_loopback(base_url)
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise LoadError("the server exited before it answered")
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + "/api/stats/", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise LoadError(f"{base_url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.25)


def warm_up(driver: Driver, plan: Sequence[PlannedRequest], *, threads: int) -> Results:
    """Send every request of ``plan`` from ``threads`` closed-loop threads; wait for all."""
    results = Results(time.monotonic())
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="warmup") as pool:
        for _ in pool.map(lambda r: driver.send(r, results), plan):
            pass
    return results


class OpenLoop:
    """Open-loop arrivals at a fixed rate in a background thread (bounded, stoppable)."""

    def __init__(
        self,
        driver: Driver,
        plan: Sequence[PlannedRequest],
        *,
        rate_per_s: float,
        max_in_flight: int = 16,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._driver = driver
        self._plan = plan
        self._rate = rate_per_s
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="openloop")
        self._thread = threading.Thread(target=self._run, name="openloop-dispatch", daemon=True)
        self.results = Results(time.monotonic())

    def start(self) -> OpenLoop:
        """Start sending (returns self)."""
        self.results = Results(time.monotonic())
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = self.results.started_monotonic
        for i, req in enumerate(self._plan):
            if self._stop.wait(max(0.0, t0 + i / self._rate - time.monotonic())):
                break
            if not self._slots.acquire(blocking=False):
                self.results.dropped += 1
                continue
            fut = self._pool.submit(self._driver.send, req, self.results)
            fut.add_done_callback(lambda _f: self._slots.release())

    def stop(self) -> Results:
        """Stop the arrivals, wait for requests in flight, return the results."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True)
        return self.results

    def __enter__(self) -> OpenLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: warm up, then drive an open loop for ``--duration`` seconds."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="base URL of the site, e.g. http://127.0.0.1:8000")
    ap.add_argument("--warmup", type=int, default=3000, help="warm-up requests (closed loop)")
    ap.add_argument("--threads", type=int, default=4, help="warm-up threads")
    ap.add_argument("--rate", type=float, default=30.0, help="open-loop arrivals per second")
    ap.add_argument("--duration", type=float, default=60.0, help="open-loop seconds")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    try:
        driver = Driver(args.url)
        wait_ready(driver.base_url, timeout_s=30)
        catalog = Catalog.fetch(driver.base_url)
        report: dict[str, Any] = {}
        if args.warmup:
            plan = plan_requests(catalog, args.warmup, seed=args.seed)
            report["warmup"] = warm_up(driver, plan, threads=args.threads).summary()
        if args.duration > 0:
            plan = plan_requests(catalog, int(args.rate * args.duration), seed=args.seed + 1)
            loop = OpenLoop(driver, plan, rate_per_s=args.rate).start()
            try:
                time.sleep(args.duration + 1)
            finally:
                report["open_loop"] = loop.stop().summary()
    except LoadError as exc:
        sys.stderr.write(f"loadgen: error: {exc}\n")
        return 3
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
