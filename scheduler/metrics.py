"""Prometheus metrics, derived without touching the hot path.

Two sources, both read-only:

- **The events stream** (``{prefix}:events``, written by the Lua transitions): a background thread
  tails it with ``XREAD BLOCK`` from the stream's end at start-up and updates counters and
  histograms (runs and steps by final state, retries, step duration, queue wait). Every process
  that exports metrics sees the whole stream, so each one counts every run: scrape one process
  for these, or aggregate across instances with ``max``, never ``sum``. A process counts only
  what happened while it was up.
- **Redis on scrape** (:class:`RedisCollector`): queue depths, running attempts, RQ workers and
  their busy ratio, scheduler lag. These are gauges of shared state: every process reports the
  same values.

``ctl scheduler --metrics-port N`` and ``ctl worker --metrics-port N`` start :func:`start`, which also
serves ``/healthz`` (the process answers) and ``/readyz`` (Redis answers and the main loop turned
recently, see :mod:`scheduler.health`) on the same port, for the chart's and Compose's probes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from scheduler.health import HEALTH, Health
from scheduler.model import QUEUES, TERMINAL_RUN_STATES, TERMINAL_STEP_STATES
from scheduler.store import RunStore

log = logging.getLogger("conveyor.metrics")

RUN_FINAL = TERMINAL_RUN_STATES
STEP_FINAL = TERMINAL_STEP_STATES
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
UNKNOWN_DAG = "unknown"


class Bounded(OrderedDict):
    """A dict that forgets its oldest entries past ``cap`` (starts whose end never comes, runs long gone)."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)


class StreamMetrics:
    """Counters and histograms fed by events. ``handle`` takes one event's fields (strings)."""

    def __init__(self, registry: CollectorRegistry, dag_of: Callable[[str], str], *, cap: int = 50_000):
        self.dag_of = dag_of
        self.runs = Counter("conveyor_runs", "Runs that ended, by final state.", ["dag", "state"],
                            registry=registry)
        self.steps = Counter("conveyor_steps", "Steps that ended, by final state.", ["dag", "step", "state"],
                             registry=registry)
        self.retries = Counter("conveyor_step_retries", "Attempts that ended and were retried.",
                               ["dag", "step"], registry=registry)
        self.duration = Histogram("conveyor_step_duration_seconds",
                                  "Step attempt duration: running to the end of the same attempt.",
                                  ["dag", "step"], buckets=DURATION_BUCKETS, registry=registry)
        self.wait = Histogram("conveyor_step_wait_seconds",
                              "Wait of a queued attempt until it runs (retries after a backoff excluded).",
                              ["dag"], buckets=WAIT_BUCKETS, registry=registry)
        self.sla_misses = Counter("conveyor_sla_misses", "Step SLAs and run deadlines missed "
                                  "(step '' is the run's deadline).", ["dag", "step"], registry=registry)
        self.adopted = Counter("conveyor_attempts_adopted", "Attempts whose container another worker adopted "
                               "(its worker died or handed it over) instead of running the step again.", ["dag"],
                               registry=registry)
        self.events = Counter("conveyor_metrics_events", "Events read from the stream by this exporter.",
                              registry=registry)
        self.lost = Counter("conveyor_attempts_lost", "Attempts declared lost: their worker stopped renewing the "
                            "lease (killed, frozen or cut off).", ["dag", "step"], registry=registry)
        self._queued: Bounded = Bounded(cap)
        self._running: Bounded = Bounded(cap)

    def handle(self, fields: Mapping[str, str]) -> None:
        self.events.inc()
        run_id, state, at = fields.get("run", ""), fields.get("state", ""), fields.get("at", "")
        if fields.get("kind") == "run":
            if state in RUN_FINAL:
                self.runs.labels(self.dag_of(run_id), state).inc()
            return
        step, attempt = fields.get("step", ""), _int(fields.get("attempt"))
        if state == "sla_miss":
            self.sla_misses.labels(self.dag_of(run_id), step).inc()
            return
        if state == "adopted":
            self.adopted.labels(self.dag_of(run_id)).inc()
            return
        if state == "lost":
            self.lost.labels(self.dag_of(run_id), step).inc()
            return
        when = _time(at)
        if state == "queued":
            if when is not None:
                self._queued[(run_id, step, attempt)] = when
        elif state == "running":
            queued = self._queued.pop((run_id, step, attempt), None)
            if queued is not None and when is not None:
                self.wait.labels(self.dag_of(run_id)).observe(max(0.0, when - queued))
            if when is not None:
                self._running[(run_id, step, attempt)] = when
        elif state == "retrying":  # carries the *next* attempt's number
            dag = self.dag_of(run_id)
            self.retries.labels(dag, step).inc()
            self._observe_duration(dag, run_id, step, attempt - 1, when)
        elif state in STEP_FINAL:
            dag = self.dag_of(run_id)
            self.steps.labels(dag, step, state).inc()
            self._observe_duration(dag, run_id, step, attempt, when)

    def _observe_duration(self, dag: str, run_id: str, step: str, attempt: int, ended: float | None) -> None:
        started = self._running.pop((run_id, step, attempt), None)
        if started is not None and ended is not None:
            self.duration.labels(dag, step).observe(max(0.0, ended - started))


class EventTail:
    """Tails the events stream in a daemon thread and hands each event to :class:`StreamMetrics`."""

    def __init__(self, store: RunStore, metrics: StreamMetrics, *, block_ms: int = 1000, count: int = 500):
        self.store = store
        self.metrics = metrics
        self.block_ms = block_ms
        self.count = count
        self.stop = threading.Event()
        self.last_id: str | None = None
        self.thread: threading.Thread | None = None

    def start_position(self) -> str:
        """The stream's last id now (like ``$``, but fixed, so nothing is missed between two reads)."""
        return self.store.last_event_id()

    def poll(self) -> int:
        """One ``XREAD``: handle what arrived (blocking up to ``block_ms``); returns how many events."""
        if self.last_id is None:
            self.last_id = self.start_position()
        handled = 0
        for entry_id, fields in self.store.read_events(self.last_id, count=self.count, block_ms=self.block_ms):
            self.last_id = entry_id
            try:
                self.metrics.handle(fields)
            except Exception:  # one odd event must not stop the metrics
                log.exception("cannot account for event %s %s", entry_id, fields)
            handled += 1
        return handled

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self.poll()
                backoff = 0.5
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("metrics: Redis unreachable (%s); retrying in %.1fs", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def start(self) -> threading.Thread:
        self.last_id = self.start_position()
        self.thread = threading.Thread(target=self.run, name="conveyor-metrics-events", daemon=True)
        self.thread.start()
        return self.thread


class DagNames:
    """Run id -> DAG name, from the run record, remembered (run ids never change DAG)."""

    def __init__(self, store: RunStore, cap: int = 20_000):
        self.store = store
        self.known: Bounded = Bounded(cap)

    def __call__(self, run_id: str) -> str:
        name = self.known.get(run_id)
        if name is None:
            name = self.store.run_dag(run_id) or UNKNOWN_DAG
            self.known[run_id] = name
        return name


class RedisCollector(Collector):
    """Gauges read from Redis at every scrape. ``conveyor_redis_up`` is 0 when Redis does not answer."""

    def __init__(self, store: RunStore, rq_connection: redis.Redis, clock: Callable[[], float] = time.time):
        self.store = store
        self.rq = rq_connection
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []  # collected live; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("conveyor_redis_up", "1 when Redis answered this scrape.")
        try:
            families = list(self._families())
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics scrape: Redis unreachable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        from rq import Worker

        depths, running, queued, oldest = self.store.gauges(QUEUES)
        depth = GaugeMetricFamily("conveyor_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"])
        for queue, count in zip(QUEUES, depths, strict=True):
            depth.add_metric([queue], count)
        yield depth
        yield GaugeMetricFamily("conveyor_running_steps", "Step attempts running now (holding a lease).",
                                value=running)
        yield GaugeMetricFamily("conveyor_queued_steps", "Step attempts queued or waiting to retry.", value=queued)
        lag = max(0.0, self.clock() - oldest[0][1]) if oldest else 0.0
        yield GaugeMetricFamily("conveyor_scheduler_lag_seconds",
                                "How late the most overdue scheduled DAG is (0 when none is overdue).", value=lag)
        states: dict[str, int] = {}
        for worker in Worker.all(connection=self.rq):
            state = str(worker.get_state() or "unknown")
            states[state] = states.get(state, 0) + 1
        workers = GaugeMetricFamily("conveyor_workers", "RQ workers by state.", labels=["state"])
        for state in sorted(states):
            workers.add_metric([state], states[state])
        yield workers
        yield GaugeMetricFamily("conveyor_dag_import_errors", "Synced DAG files that do not validate (ctl dags).",
                                value=self.store.import_error_count())
        refused = CounterMetricFamily("conveyor_jobs_refused", "RQ jobs workers refused to run: not Conveyor's "
                                      "attempt job (see runner/admission.py).")
        refused.add_metric([], self.store.jobs_refused())
        yield refused
        total = sum(states.values())
        yield GaugeMetricFamily("conveyor_worker_busy_ratio", "Busy workers / all workers (0 with none).",
                                value=states.get("busy", 0) / total if total else 0.0)


@dataclass
class Exporter:
    registry: CollectorRegistry
    tail: EventTail
    server: Any
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        self.tail.stop.set()
        self.server.shutdown()
        self.server.server_close()
        if self.tail.thread is not None:
            self.tail.thread.join(timeout=5)


def build(store: RunStore, rq_connection: redis.Redis, clock: Callable[[], float] = time.time,
          ) -> tuple[CollectorRegistry, EventTail]:
    """A registry with every Conveyor metric and the (not yet started) stream tail that feeds it."""
    registry = CollectorRegistry(auto_describe=True)
    metrics = StreamMetrics(registry, DagNames(store))
    registry.register(RedisCollector(store, rq_connection, clock))
    return registry, EventTail(store, metrics)


def watch_leadership(registry: CollectorRegistry, leading: Callable[[], bool]) -> None:
    """``conveyor_scheduler_leader``: 1 while this scheduler process leads, read from it at each scrape."""
    gauge = Gauge("conveyor_scheduler_leader", "1 while this scheduler leads, 0 while it stands by "
                  "(sum over schedulers: how many lead, which should be 1).", registry=registry)
    gauge.set_function(lambda: 1.0 if leading() else 0.0)


def redis_check(client: redis.Redis, timeout: float = 2.0) -> Callable[[], str | None]:
    """A readiness check: PING on a client of its own with a short timeout and no retries, so that a
    probe answers within its own timeout while Redis is away."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": timeout, "socket_connect_timeout": timeout,
              "retry": None}
    kwargs.pop("retry_on_error", None)
    probe = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class,
                                                             max_connections=2, **kwargs))

    def check() -> str | None:
        try:
            probe.ping()
        except (redis.RedisError, OSError) as exc:
            return f"Redis does not answer: {exc}"
        return None

    return check


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
        pass


def http_app(registry: CollectorRegistry, health: Health) -> Callable:
    """``/healthz``, ``/readyz`` (JSON details; 503 when not ready), anything else: the metrics."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            ready, details = health.report()
            body = json.dumps({"ready": ready, "checks": details}, sort_keys=True).encode() + b"\n"
            start_response("200 OK" if ready else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics_app(environ, start_response)

    return app


def serve(app: Callable, port: int, addr: str) -> tuple[Any, threading.Thread]:
    server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="conveyor-metrics-http", daemon=True)
    thread.start()
    return server, thread


def start(store: RunStore, rq_connection: redis.Redis, port: int, addr: str = "0.0.0.0",
          health: Health = HEALTH) -> Exporter:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``addr:port`` and tail the events stream,
    both in daemon threads."""
    registry, tail = build(store, rq_connection)
    tail.start()
    health.add_check("redis", store.readiness_check())
    server, thread = serve(http_app(registry, health), port, addr)
    log.info("metrics on http://%s:%d/metrics (probes: /healthz, /readyz)", addr, server.server_port)
    return Exporter(registry, tail, server, thread, server.server_port)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _time(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError):
        return None
