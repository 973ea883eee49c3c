"""The HTTP API, metrics and web UI, served by every streams worker (Faust's web server).

Requests about one job are answered by the worker that owns the job's partition: a worker that does not
own it forwards the request there (Faust table routing), so the answer comes from the live table state.
Every job answer says which worker served it (`served_by`). Older runs than the state keeps come from the
compacted `runs`/`tasks` topics. The API is described in `openapi.json` (GET /api/openapi.json).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from faust.exceptions import SameNode

from ksched.artifacts import open_store, read_log
from ksched.config import Settings
from ksched.errors import KschedError
from ksched.reader import JobStatus, job_history, job_status, read_partition
from ksched.schemas.codec import default_codec
from ksched.schemas.records import to_data

from . import faustcompat
from .core.decide import next_wakeup
from .core.model import JobState, Run
from .core.views import run_view, task_view
from .jobstore import decode_record
from .metrics import Metrics
from .query import QueryError, attempt_number, history_query, no_query, runs_query
from .shell import InboxShell

log = logging.getLogger(__name__)
UI_DIR = Path(__file__).resolve().parent / "ui"
OPENAPI = Path(__file__).resolve().parent / "openapi.json"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def _job_id_of_run(run_id: str) -> str:
    return run_id.split("@", 1)[0]


class Api:
    def __init__(self, app: Any, table: Any, shell: InboxShell, settings: Settings, worker: str,
                 metrics: Metrics) -> None:
        self.app, self.table, self.shell, self.settings, self.worker = app, table, shell, settings, worker
        self.metrics = metrics
        self.store = open_store(settings.artifacts, settings.s3_endpoint_url)

    # --- plumbing --------------------------------------------------------------------------------

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _routed(self, view: Any, request: Any, job_id: str,
                      local: Callable[[], Awaitable[Any]]) -> Any:
        """Answer here if this worker owns the job's partition, else forward to the worker that does."""
        try:
            return await self.app.router.route_req(self.table.name, job_id, view.web, request)
        except SameNode:
            return await local()
        except Exception as exc:  # the owner is unknown (rebalancing) or unreachable: say so, do not guess
            log.warning("cannot route the request for %r to its owner: %r", job_id, exc)
            return view.json({"error": f"the owner of {job_id!r} is not available; try again"}, status=503)

    def _unknown(self, view: Any, why: str) -> Any:
        """404, unless this worker's tables are still being restored after a rebalance: then the key may only
        not be here *yet*, and the client is told to try again (503) rather than that it does not exist."""
        if faustcompat.settling(self.app):
            return view.json({"error": f"{why} yet: this worker is recovering its partitions; try again"},
                             status=503)
        return view.json({"error": why}, status=404)

    def _state(self, job_id: str) -> JobState | None:
        raw = self.table.get(job_id.encode())
        return None if raw is None else decode_record(bytes(raw), self._get).state

    def _get(self, key: bytes) -> bytes | None:
        raw = self.table.get(key)
        return None if raw is None else bytes(raw)

    # --- jobs ------------------------------------------------------------------------------------

    async def jobs(self, view: Any, request: Any) -> Any:
        """All jobs in the catalog (compacted), with their schedule and whether they are paused."""
        no_query(request.query)
        def read() -> list[dict[str, Any]]:
            codec = default_codec()
            latest: dict[bytes, Any] = {}
            for p in range(self.settings.partitions):
                for m in read_partition(self.settings, self.settings.topic("jobs"), p):
                    key = m.key() or b""
                    latest[key] = None if m.value() is None else codec.decode(m.value())
            out = []
            for d in latest.values():
                if d is None:
                    continue
                s = d.job.schedule
                out.append({"job_id": d.job_id, "kind": d.job.kind, "revision": d.revision, "paused": d.paused,
                            "schedule": s.cron or ("at" if s.at_ms is not None else "once"),
                            "timezone": s.timezone, "tasks": len(d.job.tasks), "description": d.job.description})
            return sorted(out, key=lambda j: j["job_id"])
        return view.json({"jobs": await self._blocking(read), "served_by": self.worker})

    async def job(self, view: Any, request: Any, job_id: str) -> Any:
        no_query(request.query)
        async def local() -> Any:
            state = self._state(job_id)
            if state is None:
                return self._unknown(view, f"unknown job {job_id!r}")
            wake = next_wakeup(state, self.shell.params)
            held = sorted((self._live(state, r) for r in state.runs.values()),
                          key=lambda r: (r["scheduled_for_ms"], r["created_at_ms"], r["run_id"]))
            return view.json({
                "job_id": job_id, "served_by": self.worker, "revision": state.revision, "paused": state.paused,
                "deleted": state.deleted, "definition": to_data(state.spec), "next_wakeup_ms": wake,
                "updated_at_ms": state.updated_at_ms,
                "active_runs": [r.run_id for r in state.runs.values() if r.state not in TERMINAL],
                "runs": held, "older_runs": bool(state.retired),
            })
        return await self._routed(view, request, job_id, local)

    async def runs(self, view: Any, request: Any, job_id: str) -> Any:
        q = runs_query(request.query)

        async def local() -> Any:
            state = self._state(job_id)
            if state is not None and not state.retired:  # the table holds every run that has views: no reading
                status = JobStatus(job_id)
            else:
                status = await self._blocking(job_status, self.settings, job_id)
            runs = self._merge(job_id, status, state)
            if q.states is not None:
                runs = [r for r in runs if r["state"] in q.states]
            if q.since_ms is not None:
                runs = [r for r in runs if r["scheduled_for_ms"] >= q.since_ms]
            if q.until_ms is not None:
                runs = [r for r in runs if r["scheduled_for_ms"] <= q.until_ms]
            limit = q.limit
            order = [t.name for t in status.definition.job.tasks] if status.definition else []
            if state is not None:
                order = [t.name for t in state.spec.tasks]
            return view.json({"job_id": job_id, "served_by": self.worker, "tasks": order,
                              "runs": runs[-limit:] if limit > 0 else runs})
        return await self._routed(view, request, job_id, local)

    def _merge(self, job_id: str, status: JobStatus, state: JobState | None) -> list[dict[str, Any]]:
        """Runs from the views topics, overridden by the live state where it still holds them."""
        runs: dict[str, dict[str, Any]] = {}
        for r in status.ordered_runs():
            runs[r.run_id] = {**to_data(r), "tasks": [to_data(t) for t in status.tasks.get(r.run_id, {}).values()]}
        if state is not None:
            for run in state.runs.values():
                runs[run.run_id] = self._live(state, run)
        return sorted(runs.values(), key=lambda r: (r["scheduled_for_ms"], r["created_at_ms"], r["run_id"]))

    @staticmethod
    def _live(state: JobState, run: Run) -> dict[str, Any]:
        """A run the state still holds, as its views (the same as the views topics will hold)."""
        tasks = [to_data(task_view(state, run, t)) for t in run.tasks.values()]
        return {**to_data(run_view(state, run)), "tasks": tasks}

    async def run(self, view: Any, request: Any, run_id: str) -> Any:
        no_query(request.query)
        job_id = _job_id_of_run(run_id)

        async def local() -> Any:
            state = self._state(job_id)
            live = state.runs.get(run_id) if state is not None else None
            if state is not None and live is not None:  # the state still holds it: no need to read the views
                found: dict[str, Any] | None = self._live(state, live)
            else:
                status = await self._blocking(job_status, self.settings, job_id)
                found = next((r for r in self._merge(job_id, status, state) if r["run_id"] == run_id), None)
            if found is None:
                return self._unknown(view, f"unknown run {run_id!r}")
            edges = {t.name: list(t.depends_on) for t in state.spec_for(found["revision"]).tasks} if state \
                else {t["name"]: t["depends_on"] for t in found["tasks"]}
            return view.json({**found, "served_by": self.worker, "dependencies": edges})
        return await self._routed(view, request, job_id, local)

    async def history(self, view: Any, request: Any, job_id: str) -> Any:
        q = history_query(request.query)
        page = await self._blocking(partial(job_history, self.settings, job_id, since_ms=q.since_ms,
                                            until_ms=q.until_ms, limit=q.limit, ticks=q.ticks))
        return view.text(_dumps({"job_id": job_id, "served_by": self.worker, "next_since_ms": page.next_since_ms,
                                 "events": [{"at_ms": t, "topic": topic, "type": type(e).__name__, "event": to_data(e)}
                                            for t, topic, e in page.records]}), content_type="application/json")

    async def log(self, view: Any, request: Any, run_id: str, task: str, attempt: str) -> Any:
        no_query(request.query)
        number = attempt_number(attempt)
        status = await self._blocking(job_status, self.settings, _job_id_of_run(run_id))
        t = status.tasks.get(run_id, {}).get(task)
        a = next((a for a in (t.attempts if t else []) if a.attempt == number), None)
        if a is None or not a.log_ref:
            return view.text(f"no log for {run_id}/{task} attempt {attempt}\n", status=404)
        try:
            data = await self._blocking(read_log, self.store, a.log_ref)
        except KschedError as exc:
            return view.text(f"{exc}\n", status=404)
        return view.text(data.decode(errors="replace"))

    async def openapi(self, view: Any, request: Any) -> Any:
        return view.json(json.loads(OPENAPI.read_text()))

    async def metrics_page(self, view: Any, request: Any) -> Any:
        body, content_type = self.metrics.exposition()
        return view.bytes(body, content_type=content_type)

    async def ui(self, view: Any, request: Any) -> Any:
        return view.html((UI_DIR / "index.html").read_text())

    async def ui_script(self, view: Any, request: Any) -> Any:
        return view.text((UI_DIR / "app.js").read_text(), content_type="application/javascript")


def _dumps(obj: Any) -> str:
    import base64

    return json.dumps(obj, default=lambda b: base64.b64encode(b).decode() if isinstance(b, bytes) else str(b))


def install(app: Any, table: Any, shell: InboxShell, settings: Settings, worker: str, metrics: Metrics) -> Api:
    api = Api(app, table, shell, settings, worker, metrics)
    routes: list[tuple[str, Callable[..., Awaitable[Any]]]] = [
        ("/", api.ui),
        ("/ui/app.js", api.ui_script),
        ("/metrics", api.metrics_page),
        ("/api/openapi.json", api.openapi),
        ("/api/jobs", api.jobs),
        ("/api/jobs/{job_id}", api.job),
        ("/api/jobs/{job_id}/runs", api.runs),
        ("/api/jobs/{job_id}/history", api.history),
        ("/api/runs/{run_id}", api.run),
        ("/api/runs/{run_id}/tasks/{task}/attempts/{attempt}/log", api.log),
    ]
    tokens = {t for t in (settings.api_token, settings.api_admin_token) if t}
    for path, handler in routes:
        guarded = tokens if path.startswith(("/api", "/metrics")) else set()
        app.page(path, name=f"ksched{path}")(_as_view(handler, guarded))
    return api


def exposure_error(host: str, settings: Settings, open_without_token: bool) -> str | None:
    """Why the API must not listen on `host`, or None: beyond this host (not a loopback address), job data and
    logs would be readable by anyone who can reach it unless a token guards the API or it is opened on purpose."""
    if settings.api_token or settings.api_admin_token or open_without_token:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (f"--web-host {host} serves jobs, runs and logs beyond this host without a token: set "
            "KSCHED_API_TOKEN, or pass --web-open to serve them to anyone who can reach it")


def authorized(header: str | None, tokens: set[str]) -> bool:
    """Whether an Authorization header carries one of `tokens` (no tokens: the API is open, on loopback)."""
    if not tokens:
        return True
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and any(hmac.compare_digest(token.strip(), t) for t in tokens)


def _as_view(handler: Callable[..., Awaitable[Any]], tokens: set[str]) -> Callable[..., Awaitable[Any]]:
    async def view_fn(view: Any, request: Any, **match: Any) -> Any:
        if not authorized(request.headers.get("Authorization"), tokens):
            response = view.json({"error": "a bearer token is required (Authorization: Bearer ...)"}, status=401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="ksched"'
            return response
        try:
            return await handler(view, request, **match)
        except QueryError as exc:
            return view.json({"error": str(exc), "param": exc.param}, status=400)
    view_fn.__name__ = handler.__name__
    return view_fn
