"""Prometheus metrics of the daemon, on a loopback address (default 127.0.0.1:9539).

The exporter's HTTP thread never touches the daemon's state. At scrape time the
collector asks the daemon's event loop for its status through :attr:`Metrics.source`
(the loop computes it, the thread waits up to ``SCRAPE_WAIT_S``) and turns it into
metric families; when the loop cannot answer in time, or has stopped, the last status
it handed over (:meth:`Metrics.update`) is served instead. So the status of 10,000
servers (~45 ms) is built once per scrape, and never when nobody scrapes, rather than
on a timer.

Metrics (labels ``virtual``, ``server``):

* ``lvs_router_server_up`` 1 up, 0 down, -1 not checked yet;
* ``lvs_router_server_in_dataplane``, ``lvs_router_server_weight``;
* ``lvs_router_check_latency_seconds`` of the last check; ``lvs_router_checks_total``,
  ``lvs_router_check_failures_total``;
* ``lvs_router_sorry_server_active`` per virtual;
* ``lvs_router_dataplane_packets_total``, ``..._bytes_total``, ``..._connections_total``
  per virtual and per real server (``server=""`` for the virtual);
* ``lvs_router_reloads_total{outcome="ok"|"failed"}``;
* ``lvs_router_check_duration_seconds`` (histogram) and
  ``lvs_router_check_results_total{result="ok"|"failed"}`` per virtual, every check;
* ``lvs_router_dataplane_sync_seconds`` (histogram): each reconcile of the dataplane.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

PREFIX = "lvs_router"
CHECK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30)
SCRAPE_WAIT_S = 5.0  # how long a scrape waits for the event loop's status


class _Checks:
    """One virtual's check results since start: a histogram of durations (counts per
    bucket of ``CHECK_BUCKETS``, the last one +Inf) and ok/failed counts. Plain
    integers bumped on the event loop for every check (10,000 a second at scale, where
    prometheus_client's labelled, locked histogram and counter cost ~10 % of a core);
    the scrape thread reads them whole."""

    __slots__ = ("buckets", "failed", "ok", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(CHECK_BUCKETS) + 1)
        self.sum = 0.0
        self.ok = 0
        self.failed = 0


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self):
        snap = self.m.current() or {"virtuals": [], "reloads": {}}
        up = GaugeMetricFamily(
            f"{PREFIX}_server_up", "1 up, 0 down, -1 unchecked", labels=["virtual", "server"]
        )
        indp = GaugeMetricFamily(
            f"{PREFIX}_server_in_dataplane",
            "the server is in the dataplane",
            labels=["virtual", "server"],
        )
        weight = GaugeMetricFamily(
            f"{PREFIX}_server_weight",
            "weight in the dataplane (0 = quiesced)",
            labels=["virtual", "server"],
        )
        lat = GaugeMetricFamily(
            f"{PREFIX}_check_latency_seconds",
            "duration of the last check",
            labels=["virtual", "server"],
        )
        checks = CounterMetricFamily(f"{PREFIX}_checks", "checks run", labels=["virtual", "server"])
        fails = CounterMetricFamily(
            f"{PREFIX}_check_failures", "checks failed", labels=["virtual", "server"]
        )
        sorry = GaugeMetricFamily(
            f"{PREFIX}_sorry_server_active", "the sorry server is in", labels=["virtual"]
        )
        traffic = {
            k: CounterMetricFamily(
                f"{PREFIX}_dataplane_{k}",
                f"{k} counted by the dataplane",
                labels=["virtual", "server"],
            )
            for k in ("packets", "bytes", "connections")
        }
        for vs in snap["virtuals"]:
            sorry.add_metric([vs["name"]], 1 if vs["sorry_active"] else 0)
            _traffic(traffic, [vs["name"], ""], vs["counters"])
            for rs in vs["servers"]:
                labels = [vs["name"], rs["name"]]
                state = {"up": 1, "down": 0, "quiesced": 0}.get(rs["state"], -1)
                up.add_metric(labels, state)
                indp.add_metric(labels, 1 if rs["in_dataplane"] else 0)
                weight.add_metric(labels, rs["weight"] or 0)
                if rs["last_latency_s"] is not None:
                    lat.add_metric(labels, rs["last_latency_s"])
                if rs["checks"] is not None:
                    checks.add_metric(labels, rs["checks"])
                if rs["failures"] is not None:
                    fails.add_metric(labels, rs["failures"])
                _traffic(traffic, labels, rs["counters"])
        reloads = CounterMetricFamily(f"{PREFIX}_reloads", "config reloads", labels=["outcome"])
        for outcome in ("ok", "failed"):
            reloads.add_metric([outcome], self.m.reloads[outcome])
        yield from (up, indp, weight, lat, checks, fails, sorry, *traffic.values(), reloads)
        yield from self._checks()

    def _checks(self):
        duration = HistogramMetricFamily(
            f"{PREFIX}_check_duration_seconds",
            "duration of each health check",
            labels=["virtual"],
        )
        results = CounterMetricFamily(
            f"{PREFIX}_check_results", "health check results", labels=["virtual", "result"]
        )
        for virtual, c in sorted(self.m.checks.items()):
            counts, total = list(c.buckets), 0
            cumulative = []
            for le, n in zip((*CHECK_BUCKETS, float("inf")), counts, strict=True):
                total += n
                cumulative.append(("+Inf" if le == float("inf") else str(le), total))
            duration.add_metric([virtual], cumulative, sum_value=c.sum)
            results.add_metric([virtual, "ok"], c.ok)
            results.add_metric([virtual, "failed"], c.failed)
        yield from (duration, results)


def _traffic(families: dict[str, CounterMetricFamily], labels: list[str], c: Any) -> None:
    if c:
        for k, fam in families.items():
            fam.add_metric(labels, c[k])


class Metrics:
    def __init__(self) -> None:
        self.snapshot: dict[str, Any] | None = None
        # called from the scrape thread for a fresh status (the daemon bridges it to its
        # event loop); None: serve what update() handed over
        self.source: Callable[[], dict[str, Any]] | None = None
        self.reloads = {"ok": 0, "failed": 0}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        # every check, as it happens (label cardinality: one virtual per service)
        self.checks: dict[str, _Checks] = {}
        self.sync = Histogram(
            f"{PREFIX}_dataplane_sync_seconds",
            "time to bring the dataplane in line with a new decision",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self._server: Any = None

    def serve(self, address: str, port: int) -> None:
        started = start_http_server(port, addr=address, registry=self.registry)
        self._server = started[0] if isinstance(started, tuple) else None

    def update(self, status: dict[str, Any]) -> None:
        self.snapshot = status  # swapped whole: the scrape thread reads it

    def current(self) -> dict[str, Any] | None:
        """The status a scrape exports: fresh from :attr:`source` when it answers,
        otherwise (a busy or stopped loop) the last one handed over."""
        if self.source is not None:
            # a scrape must not fail because the loop is busy or gone
            with contextlib.suppress(Exception):
                self.update(self.source())
        return self.snapshot

    def observe_check(self, virtual: str, server: str, ok: bool, latency: float | None) -> None:
        c = self.checks.get(virtual)
        if c is None:
            c = self.checks[virtual] = _Checks()
        if latency is not None:
            c.buckets[bisect_left(CHECK_BUCKETS, latency)] += 1
            c.sum += latency
        if ok:
            c.ok += 1
        else:
            c.failed += 1

    def observe_sync(self, seconds: float) -> None:
        self.sync.observe(seconds)

    def reloaded(self, ok: bool) -> None:
        self.reloads["ok" if ok else "failed"] += 1

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
