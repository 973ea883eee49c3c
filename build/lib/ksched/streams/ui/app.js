// ksched web UI: jobs -> run grid -> one run's DAG and attempts -> an attempt's log. Polls the API.
"use strict";
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const ts = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").replace("Z", "") : "-");
const badge = (state) => `<span class="badge s-${esc(state)}">${esc(state)}</span>`;
const enc = encodeURIComponent;

// With API tokens configured, open the UI once as /?token=...: it keeps the token for this tab only.
const given = new URLSearchParams(location.search).get("token");
if (given) { sessionStorage.setItem("ksched-token", given); history.replaceState(null, "", location.pathname + location.hash); }

async function api(path) {
  const token = sessionStorage.getItem("ksched-token");
  const r = await fetch(path, token ? { headers: { Authorization: `Bearer ${token}` } } : {});
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return (r.headers.get("content-type") || "").includes("json") ? r.json() : r.text();
}

function crumbs(parts) {
  $("#crumbs").innerHTML = parts.map(([label, href]) => (href ? `<a href="${href}">${esc(label)}</a>` : `<span>${esc(label)}</span>`)).join(" / ");
}

async function jobsPage() {
  crumbs([]);
  const data = await api("/api/jobs");
  const rows = data.jobs.map((j) => `<tr>
      <td><a class="job-link" data-job="${esc(j.job_id)}" href="#/jobs/${enc(j.job_id)}">${esc(j.job_id)}</a></td>
      <td>${esc(j.kind)}</td><td>${esc(j.schedule)} <span class="muted">${esc(j.timezone)}</span></td>
      <td>${j.tasks}</td><td>${j.revision}</td><td>${j.paused ? "paused" : "active"}</td><td class="muted">${esc(j.description)}</td></tr>`);
  return `<h2>Jobs</h2><table id="jobs"><tr><th>job</th><th>kind</th><th>schedule</th><th>tasks</th><th>revision</th><th>state</th><th></th></tr>${rows.join("")}</table>`;
}

async function jobPage(jobId) {
  crumbs([["jobs", "#/"], [jobId]]);
  const [job, data] = await Promise.all([api(`/api/jobs/${enc(jobId)}`), api(`/api/jobs/${enc(jobId)}/runs?limit=30`)]);
  const names = data.tasks;
  const rows = data.runs.slice().reverse().map((r) => {
    const byName = Object.fromEntries(r.tasks.map((t) => [t.name, t]));
    const cells = names.map((n) => {
      const t = byName[n];
      const st = t ? t.state : "WAITING";
      return `<td class="cell s-${esc(st)}" data-state="${esc(st)}" data-task="${esc(n)}" title="${esc(n)}: ${esc(st)}"
                 onclick="location.hash='#/runs/${enc(r.run_id)}'">${t && t.attempt > 1 ? "#" + t.attempt : ""}</td>`;
    });
    return `<tr class="run-row" data-run="${esc(r.run_id)}"><td><a class="run-link" href="#/runs/${enc(r.run_id)}">${esc(r.run_id)}</a></td>
            <td>${badge(r.state)}</td><td>${ts(r.scheduled_for_ms)}</td>${cells.join("")}</tr>`;
  });
  const sched = job.definition.schedule;
  return `<h2>${esc(jobId)} <span class="muted">revision ${job.revision}${job.paused ? ", paused" : ""}</span></h2>
    <p class="muted">${esc(sched.cron || (sched.at_ms ? "once at " + ts(sched.at_ms) : "once"))} ${esc(sched.timezone)} · served by ${esc(job.served_by)}</p>
    <table id="grid"><tr><th>run</th><th>state</th><th>scheduled (UTC)</th>${names.map((n) => `<th>${esc(n)}</th>`).join("")}</tr>${rows.join("")}</table>`;
}

function dagSvg(run) {
  const deps = run.dependencies || {};
  const names = run.tasks.map((t) => t.name);
  const level = {};
  const depth = (n, seen = new Set()) => {
    if (n in level) return level[n];
    if (seen.has(n)) return 0;
    seen.add(n);
    level[n] = (deps[n] || []).reduce((m, p) => Math.max(m, depth(p, seen) + 1), 0);
    return level[n];
  };
  names.forEach((n) => depth(n));
  const columns = {};
  names.forEach((n) => (columns[level[n]] = columns[level[n]] || []).push(n));
  const W = 130, H = 34, GX = 60, GY = 18, pos = {};
  Object.entries(columns).forEach(([lvl, col]) => col.forEach((n, i) => (pos[n] = { x: 10 + lvl * (W + GX), y: 10 + i * (H + GY) })));
  const width = 20 + (Math.max(0, ...Object.keys(columns).map(Number)) + 1) * (W + GX);
  const height = 20 + Math.max(...Object.values(columns).map((c) => c.length)) * (H + GY);
  const state = Object.fromEntries(run.tasks.map((t) => [t.name, t.state]));
  const edges = names.flatMap((n) => (deps[n] || []).filter((p) => pos[p]).map((p) =>
    `<path class="edge" d="M${pos[p].x + W},${pos[p].y + H / 2} C${pos[p].x + W + GX / 2},${pos[p].y + H / 2} ${pos[n].x - GX / 2},${pos[n].y + H / 2} ${pos[n].x},${pos[n].y + H / 2}"/>`));
  const nodes = names.map((n) => `<g class="node" data-task="${esc(n)}" data-state="${esc(state[n])}" transform="translate(${pos[n].x},${pos[n].y})">
      <rect width="${W}" height="${H}" class="s-${esc(state[n])}" style="fill: var(--${colour(state[n])})"></rect>
      <text x="10" y="21">${esc(n)}</text></g>`);
  return `<svg id="dag" width="${width}" height="${height}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8a94a3"/></marker></defs>${edges.join("")}${nodes.join("")}</svg>`;
}

function colour(state) {
  return { SUCCEEDED: "ok", FAILED: "fail", RUNNING: "run", CLAIMED: "staged", READY: "ready", WAITING: "wait", SKIPPED: "skip",
           UPSTREAM_FAILED: "up", CANCELLED: "cancel", RETRY_WAIT: "retry" }[state] || "wait";
}

async function runPage(runId) {
  const jobId = runId.split("@")[0];
  crumbs([["jobs", "#/"], [jobId, `#/jobs/${enc(jobId)}`], [runId]]);
  const run = await api(`/api/runs/${enc(runId)}`);
  const attempts = run.tasks.flatMap((t) => t.attempts.map((a) => `<tr class="attempt-row" data-task="${esc(t.name)}" data-attempt="${a.attempt}">
      <td>${esc(t.name)}</td><td>${a.attempt}</td><td>${badge(a.outcome || t.state)}</td><td>${a.exit_code ?? "-"}</td>
      <td>${esc(a.executor_id)}</td><td>${a.fencing_token}</td><td>${ts(a.started_at_ms)}</td><td>${ts(a.finished_at_ms)}</td>
      <td class="muted">${esc(a.reason)}</td>
      <td>${a.log_ref ? `<a class="log-link" href="#/runs/${enc(runId)}/tasks/${enc(t.name)}/attempts/${a.attempt}">log</a>` : ""}</td></tr>`));
  return `<h2>${esc(runId)} ${badge(run.state)}</h2>
    <p class="muted">${esc(run.trigger)} · revision ${run.revision} · scheduled ${ts(run.scheduled_for_ms)} · served by ${esc(run.served_by)}</p>
    ${dagSvg(run)}
    <h3>Attempts</h3>
    <table id="attempts"><tr><th>task</th><th>attempt</th><th>outcome</th><th>exit</th><th>executor</th><th>fencing token</th><th>started</th><th>finished</th><th>reason</th><th></th></tr>${attempts.join("")}</table>`;
}

async function logPage(runId, task, attempt) {
  const jobId = runId.split("@")[0];
  crumbs([["jobs", "#/"], [jobId, `#/jobs/${enc(jobId)}`], [runId, `#/runs/${enc(runId)}`], [`${task} #${attempt}`]]);
  const text = await api(`/api/runs/${enc(runId)}/tasks/${enc(task)}/attempts/${attempt}/log`);
  return `<h2>${esc(task)} attempt ${esc(attempt)}</h2><pre id="log">${esc(text)}</pre>`;
}

async function render() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  let html;
  try {
    if (parts[0] === "jobs" && parts[1]) html = await jobPage(parts[1]);
    else if (parts[0] === "runs" && parts[2] === "tasks") html = await logPage(parts[1], parts[3], parts[5]);
    else if (parts[0] === "runs" && parts[1]) html = await runPage(parts[1]);
    else html = await jobsPage();
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("#status").textContent = "error: " + e.message;
    return;
  }
  if ($("#main").innerHTML !== html) $("#main").innerHTML = html;
}

window.addEventListener("hashchange", render);
render();
setInterval(() => { if (!location.hash.includes("/attempts/")) render(); }, 1000);
