"""Prometheus metrics of the service (``GET /metrics``, prometheus-client's text format).

    recsys_http_requests_total{method, route, status}      requests answered (route = the route's template,
                                                           ``unmatched`` for paths no route has; method
                                                           ``other`` beyond the standard ones)
    recsys_http_request_duration_seconds{route}            latency histogram, from the first byte the app
                                                           sees to the last it sends
    recsys_champion_version{model}                         the served version (absent before a champion)
    recsys_champion_load_seconds{model}                    how long loading the served champion took
    recsys_champion_loaded_timestamp_seconds{model}        when it was loaded (Unix time)
    recsys_degraded{model}                                 1 while the pointer names a run that cannot be loaded
    recsys_reload_errors_total{model}                      failed looks at the pointer / loads since start

Each app has its own ``CollectorRegistry`` (two apps in one process, as in tests, never collide); the
champion's figures are read from the holder at scrape time, so a swap needs no bookkeeping here.
"""

from __future__ import annotations

import calendar
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# latency buckets (s): a known user's answer takes ~1 ms; the tail shows the machine, swaps and GC
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _ChampionCollector:
    def __init__(self, holder):
        self.holder = holder

    def collect(self):
        holder, name = self.holder, self.holder.name
        champion = holder.current
        version = GaugeMetricFamily("recsys_champion_version", "version of the served champion", labels=["model"])
        load = GaugeMetricFamily("recsys_champion_load_seconds", "seconds loading the served champion took",
                                 labels=["model"])
        loaded = GaugeMetricFamily("recsys_champion_loaded_timestamp_seconds",
                                   "when the served champion was loaded (Unix time)", labels=["model"])
        if champion is not None:
            version.add_metric([name], champion.version)
            load.add_metric([name], champion.load_seconds)
            loaded.add_metric([name], calendar.timegm(time.strptime(champion.loaded_at, "%Y-%m-%dT%H:%M:%SZ")))
        degraded = GaugeMetricFamily("recsys_degraded", "1 while the champion pointer names a run that cannot be "
                                     "loaded (the old champion keeps serving)", labels=["model"])
        degraded.add_metric([name], 1.0 if holder.last_error is not None else 0.0)
        errors = CounterMetricFamily("recsys_reload_errors", "failed reads of the champion pointer or loads of "
                                     "its run since start", labels=["model"])
        errors.add_metric([name], holder.reload_errors)
        yield from (version, load, loaded, degraded, errors)


class ServiceMetrics:
    """The counters and histogram the HTTP layer feeds, plus the holder's figures."""

    def __init__(self, holder):
        self.registry = CollectorRegistry()
        self.requests = Counter("recsys_http_requests", "HTTP requests answered, by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("recsys_http_request_duration_seconds", "seconds from request to the last byte "
                                 "of the answer, by route", ["route"], buckets=BUCKETS, registry=self.registry)
        self.registry.register(_ChampionCollector(holder))
        self._children: dict = {}   # (method, route, status) -> (counter, histogram): labels() once each

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"   # a client's made-up method names must not grow the label set
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(method, route, str(status)),
                                              self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
