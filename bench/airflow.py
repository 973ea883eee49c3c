"""ksched against a tuned Apache Airflow 3 on the same two DAG workloads, one after the other in the same run.

First ksched (bench/dag.py as it is: a 100-task chain and a 1,002-task fan-out/fan-in of no-op processes), then
Airflow 3.3.2 on the same shapes: LocalExecutor with parallelism 16 (ksched's executor has 16 slots), a private
PostgreSQL as the metadata database, the API server, scheduler and DAG processor as their own processes, the
scheduler tuned for latency (see `airflow_env`). Airflow's tasks are BashOperators, the lightest operator that
still runs a process of the task's own (EmptyOperator never reaches an executor: the scheduler marks it done);
each appends its task id and bash's $EPOCHREALTIME to a file (builtins only, no further process), which times
the hand-off from process to process as bench/dag.py does, beside the metadata database's start/end dates.
One run of a 4-task DAG warms Airflow up first (an API server worker's first task waits ~8 s). Prints both
sides' figures and the ratios Airflow / ksched, and writes bench/results/airflow.json.

    ./dev bench airflow [--chain 100] [--fan 1000] [--venv PATH] [--keep] [--skip-ksched]

Sets Airflow up in its own venv the first time (~/.cache/ksched-bench/airflow-venv; pip from PyPI without
Airflow's constraint files) and needs Debian's PostgreSQL (installed with apt-get when missing and run as root).
Takes about 10 minutes on 2 cores (ksched ~2, Airflow ~7); run nothing else CPU-heavy meanwhile. On request
only, never in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ksched.devbroker import free_port

from .common import RESULTS, report
from .common import summary as _summary

AIRFLOW = "3.3.2"
# Without constraint files (not reachable here) pip takes the newest of every dependency; 3.3.2 needed no pin.
PACKAGES = [f"apache-airflow=={AIRFLOW}", "apache-airflow-providers-postgres", "psycopg2-binary"]
DAGS = ("ksched_chain", "ksched_fan", "ksched_warmup")
NAN = float("nan")

_HEAD = """from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, chain

def op(task_id):
    return BashOperator(task_id=task_id, do_xcom_push=False,
                        bash_command='echo "$AIRFLOW_CTX_TASK_ID $EPOCHREALTIME" >> {marks}')

"""
CHAIN_DAG = _HEAD + """with DAG("ksched_chain", schedule=None, catchup=False, is_paused_upon_creation=False):
    chain(*[op(f"s{{i:03d}}") for i in range({n})])
"""
FAN_DAG = _HEAD + """with DAG("ksched_fan", schedule=None, catchup=False, is_paused_upon_creation=False):
    op("start") >> [op(f"t{{i:04d}}") for i in range({n})] >> op("end")
"""
WARMUP_DAG = _HEAD + """with DAG("ksched_warmup", schedule=None, catchup=False, is_paused_upon_creation=False):
    [op(f"w{{i}}") for i in range(4)]
"""


def ensure_venv(venv: Path) -> Path:
    """The Airflow venv, made and installed the first time (a few minutes)."""
    if not (venv / ".installed").exists():
        print(f"airflow: installing Airflow {AIRFLOW} into {venv}", file=sys.stderr, flush=True)
        subprocess.run([shutil.which("python3.11") or "python3.11", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", *PACKAGES], check=True)
        (venv / ".installed").touch()
    return venv / "bin/airflow"


def ensure_postgres() -> None:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "postgresql"], check=True, stdout=subprocess.DEVNULL)


def airflow_env(home: Path, db_url: str, api_port: int) -> dict[str, str]:
    """Airflow's configuration (Airflow 3.3 option names), tuned for latency on one machine."""
    secret = secrets.token_hex(32)
    cfg = {
        "CORE__EXECUTOR": "LocalExecutor",
        "CORE__PARALLELISM": "16",
        "CORE__MAX_ACTIVE_TASKS_PER_DAG": "16",
        "CORE__LOAD_EXAMPLES": "False",
        "CORE__DAGS_FOLDER": str(home / "dags"),
        "CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "DATABASE__SQL_ALCHEMY_CONN": db_url,
        "API__HOST": "127.0.0.1",
        "API__PORT": str(api_port),
        "API__WORKERS": "2",  # "roughly the number of cores"; every task talks to it several times
        "API__SECRET_KEY": secret,
        "API_AUTH__JWT_SECRET": secret,
        "SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",  # default 1 s: the loop's sleep when it found nothing
        "SCHEDULER__MAX_TIS_PER_QUERY": "0",  # = parallelism
        "SCHEDULER__TASK_QUEUED_TIMEOUT": "7200",  # the fan-out's tasks wait long for one of 16 slots
        "DAG_PROCESSOR__REFRESH_INTERVAL": "2",
        "DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",  # parse once, not again while measuring
        "DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "WORKERS__EXECUTION_API_TIMEOUT": "30",  # default 5 s; the API server is slow when the 2 cores are busy
        "LOGGING__LOGGING_LEVEL": "WARNING",
        "LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
    }
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV"))},
            "AIRFLOW_HOME": str(home), **{f"AIRFLOW__{k}": v for k, v in cfg.items()}}


class Airflow:
    """Airflow's three processes on one home, each in a process group of its own with its log in the home."""

    def __init__(self, binary: Path, env: dict[str, str], pg: Any, api_port: int) -> None:
        self.binary, self.env, self.pg, self.api_port = binary, env, pg, api_port
        self.home = Path(env["AIRFLOW_HOME"])
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def cli(self, *args: str) -> str:
        proc = subprocess.run([str(self.binary), *args], env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return proc.stdout

    def start(self) -> None:
        for name in ("api-server", "scheduler", "dag-processor"):
            with open(self.home / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen([str(self.binary), name], env=self.env, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home)

    def log_tail(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout_s: float = 600) -> dict[str, Any]:
        """Until the API server says all is healthy and both DAGs are parsed and unpaused."""
        deadline = time.time() + timeout_s
        health: dict[str, Any] = {}
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited with {p.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(OSError, ValueError):
                url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"
                with urllib.request.urlopen(url, timeout=5) as r:
                    health = json.load(r)
            healthy = all(health.get(k, {}).get("status") == "healthy"
                          for k in ("metadatabase", "scheduler", "dag_processor"))
            dags = self.pg.query(f"SELECT count(*) FROM dag WHERE dag_id IN {DAGS} AND NOT is_paused "
                                 "AND NOT is_stale") if healthy else [["0"]]
            if dags[0][0] == str(len(DAGS)):
                return health
            time.sleep(2)
        raise RuntimeError(f"Airflow not ready after {timeout_s:.0f}s: health {health}\n"
                           f"{self.log_tail('dag-processor')}\n{self.log_tail('scheduler')}")

    def run(self, dag_id: str, timeout_s: float) -> str:
        """Trigger a run of `dag_id` and wait for it to end; returns its run id."""
        run_id = f"bench_{time.time_ns()}"
        self.cli("dags", "trigger", dag_id, "--run-id", run_id)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            state = self.pg.query(f"SELECT state FROM dag_run WHERE dag_id = '{dag_id}' AND run_id = '{run_id}'")
            if state and state[0][0] in ("success", "failed"):
                break
            time.sleep(2)
        else:
            raise TimeoutError(f"{dag_id} did not finish in {timeout_s:.0f}s")
        counts = self.pg.query(f"SELECT coalesce(state, 'none'), count(*) FROM task_instance WHERE dag_id = "
                               f"'{dag_id}' AND run_id = '{run_id}' GROUP BY 1")
        if state[0][0] != "success":
            raise RuntimeError(f"{dag_id} run {state[0][0]}: task states {counts}\n{self.log_tail('scheduler')}")
        return run_id

    def stop(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def summary(values: list[float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in _summary(values).items()}


def _ms(v: str) -> float:
    return float(v) * 1000 if v else NAN


def task_times(pg: Any, dag_id: str, run_id: str) -> dict[str, dict[str, float]]:
    """Per task: scheduled, queued, start, end (ms since the epoch) from the task_instance table."""
    rows = pg.query("SELECT task_id, extract(epoch FROM scheduled_dttm), extract(epoch FROM queued_dttm), "
                    "extract(epoch FROM start_date), extract(epoch FROM end_date) FROM task_instance "
                    f"WHERE dag_id = '{dag_id}' AND run_id = '{run_id}'")
    return {r[0]: dict(zip(("scheduled", "queued", "start", "end"), map(_ms, r[1:]), strict=True)) for r in rows}


def triggered_at(pg: Any, dag_id: str, run_id: str) -> tuple[float, float]:
    """When the run was created (queued) and when Airflow recorded it ended, ms since the epoch."""
    row = pg.query("SELECT extract(epoch FROM queued_at), extract(epoch FROM end_date) FROM dag_run "
                   f"WHERE dag_id = '{dag_id}' AND run_id = '{run_id}'")[0]
    return _ms(row[0]), _ms(row[1])


def marks(path: Path) -> dict[str, float]:
    """When each task's bash ran (ms since the epoch), from the lines the tasks appended."""
    out: dict[str, float] = {}
    for line in path.read_text().splitlines():
        task, at = line.split()
        out.setdefault(task, float(at.replace(",", ".")) * 1000)
    return out


def chain_figures(pg: Any, run_id: str, mark: dict[str, float], n: int) -> dict[str, Any]:
    ti = task_times(pg, "ksched_chain", run_id)
    queued, run_end = triggered_at(pg, "ksched_chain", run_id)
    pairs = [(ti[f"s{i - 1:03d}"], ti[f"s{i:03d}"]) for i in range(1, n)]
    steps = {"parent_end_to_child_scheduled_ms": [c["scheduled"] - p["end"] for p, c in pairs],
             "scheduled_to_queued_ms": [c["queued"] - c["scheduled"] for _, c in pairs],
             "queued_to_start_ms": [c["start"] - c["queued"] for _, c in pairs]}
    return {"chain_tasks": n,
            "handoff_ms": summary([c["start"] - p["end"] for p, c in pairs]),
            "process_handoff_ms": summary([mark[f"s{i:03d}"] - mark[f"s{i - 1:03d}"] for i in range(1, n)]),
            "handoff_steps": {k: summary(v) for k, v in steps.items()},
            "chain_total_s": round((ti[f"s{n - 1:03d}"]["end"] - ti["s000"]["start"]) / 1000, 2),
            "chain_trigger_to_run_end_s": round((run_end - queued) / 1000, 2)}


def fan_figures(pg: Any, run_id: str, mark: dict[str, float], n: int) -> dict[str, Any]:
    ti = task_times(pg, "ksched_fan", run_id)
    queued, _ = triggered_at(pg, "ksched_fan", run_id)
    middle = [t for t in ti if t.startswith("t")]
    return {"fan_tasks": n + 2,
            "fan_time_to_finish_s": round((max(t["end"] for t in ti.values()) - queued) / 1000, 2),
            "fan_trigger_to_first_start_s": round((ti["start"]["start"] - queued) / 1000, 2),
            "fan_in_handoff_ms": round(ti["end"]["start"] - max(ti[t]["end"] for t in middle)),
            "fan_in_process_handoff_ms": round(mark["end"] - max(mark[t] for t in middle))}


def measure_airflow(args: argparse.Namespace, home: Path, pg_dir: Path) -> dict[str, Any]:
    from ksched.devbroker.connect import Postgres

    binary = ensure_venv(args.venv)
    ensure_postgres()
    pg = Postgres(pg_dir, database="airflow", user="airflow", password="airflow-bench")
    airflow: Airflow | None = None
    try:
        pg.start()
        # Commits without waiting for the disk, as the Kafka broker (no fsync per write) does on ksched's side.
        pg.query("ALTER SYSTEM SET synchronous_commit = off", database="postgres")
        pg.query("SELECT pg_reload_conf()", database="postgres")
        (home / "dags").mkdir(parents=True)
        (home / "dags/chain.py").write_text(CHAIN_DAG.format(n=args.chain, marks=home / "chain.marks"))
        (home / "dags/fan.py").write_text(FAN_DAG.format(n=args.fan, marks=home / "fan.marks"))
        (home / "dags/warmup.py").write_text(WARMUP_DAG.format(marks=home / "warmup.marks"))
        api_port = free_port()
        env = airflow_env(home, f"postgresql+psycopg2://airflow:airflow-bench@127.0.0.1:{pg.port}/airflow", api_port)
        airflow = Airflow(binary, env, pg, api_port)
        began = time.monotonic()
        airflow.cli("db", "migrate")
        airflow.start()
        airflow.wait_ready()
        figures: dict[str, Any] = {"version": airflow.cli("version").strip(),
                                   "startup_s": round(time.monotonic() - began, 1)}
        print(f"airflow: up in {figures['startup_s']}s", file=sys.stderr, flush=True)
        # Each API server worker answers its first task ~8 s late (cold); a production Airflow is warm.
        airflow.run("ksched_warmup", 600)
        if args.chain:
            run_id = airflow.run("ksched_chain", 3600)
            figures.update(chain_figures(pg, run_id, marks(home / "chain.marks"), args.chain))
            print(f"airflow chain: {figures}", file=sys.stderr, flush=True)
        if args.fan:
            run_id = airflow.run("ksched_fan", 7200)
            figures.update(fan_figures(pg, run_id, marks(home / "fan.marks"), args.fan))
        return figures
    finally:
        if airflow is not None:
            airflow.stop()
        pg.stop()


def p50(figures: dict[str, Any], key: str = "handoff_ms") -> Any:
    return (figures.get(key) or {}).get("p50")


def ratio(a: Any, b: Any) -> float:
    return round(a / b, 1) if isinstance(a, int | float) and isinstance(b, int | float) and b else NAN


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chain", type=int, default=100)
    ap.add_argument("--fan", type=int, default=1000)
    ap.add_argument("--venv", type=Path, default=Path.home() / ".cache/ksched-bench/airflow-venv")
    ap.add_argument("--keep", action="store_true", help="leave the Airflow home (DAGs, logs) for inspection")
    ap.add_argument("--skip-ksched", action="store_true", help="take ksched's figures from bench/results/dag.json")
    args = ap.parse_args(argv)
    began = time.monotonic()
    if not args.skip_ksched:
        from . import dag

        print("== ksched (bench.dag)", file=sys.stderr, flush=True)
        dag.main(["--chain", str(args.chain), "--fan", str(args.fan)])
    ksched_wall_s = round(time.monotonic() - began, 1)
    ksched = json.loads((RESULTS / "dag.json").read_text()) if (RESULTS / "dag.json").exists() else {}
    print(f"== Apache Airflow {AIRFLOW}", file=sys.stderr, flush=True)
    home = Path(tempfile.mkdtemp(prefix="ksched-airflow-"))
    pg_dir = Path(tempfile.mkdtemp(prefix="ksched-airflow-pg-"))  # its own: chowned to the postgres user as root
    began = time.monotonic()
    try:
        airflow: dict[str, Any] = measure_airflow(args, home, pg_dir)
    except Exception as e:  # report why, with no figures
        airflow = {"error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(pg_dir, ignore_errors=True)
        if args.keep:
            print(f"airflow: home kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    airflow["wall_s"] = round(time.monotonic() - began, 1)
    ks = {k: ksched.get(k) for k in ("at", "chain_total_s", "handoff_ms", "fan_time_to_finish_s",
                                     "fan_in_handoff_ms")}
    ks["wall_s"] = ksched_wall_s
    ratios = {"chain_total": ratio(airflow.get("chain_total_s"), ks["chain_total_s"]),
              "chain_handoff_p50": ratio(p50(airflow), p50(ks)),
              "chain_process_handoff_p50": ratio(p50(airflow, "process_handoff_ms"), p50(ks)),
              "fan_time_to_finish": ratio(airflow.get("fan_time_to_finish_s"), ks["fan_time_to_finish_s"]),
              "fan_in_handoff": ratio(airflow.get("fan_in_handoff_ms"), ks["fan_in_handoff_ms"]),
              "fan_in_process_handoff": ratio(airflow.get("fan_in_process_handoff_ms"), ks["fan_in_handoff_ms"])}
    report("airflow", {"definitions": {
        "ksched": "bench/dag.py's figures (see there), from bench/results/dag.json written at `at`",
        "handoff_ms": "Airflow: parent task instance's end_date -> child's start_date (metadata DB; start_date is "
                      "set when the worker has forked the task's process, before it parses the DAG file)",
        "process_handoff_ms": "Airflow: the parent's bash ran -> the child's bash ran (the tasks' own "
                              "timestamps): process to process, as ksched's handoff_ms",
        "handoff_steps": "Airflow's hand-off split: parent end -> child scheduled -> queued -> started",
        "chain_total_s": "both: first task's start -> last task's end",
        "chain_trigger_to_run_end_s": "Airflow: the dag run's creation (queued_at) -> its end_date",
        "fan_time_to_finish_s": "both: the run's trigger (ksched: RunTriggered; Airflow: dag_run.queued_at) -> "
                                "the last task's end",
        "fan_in_handoff_ms": "last middle task's end -> the sink's start (Airflow: DB dates; "
                             "fan_in_process_handoff_ms: bash timestamps)",
        "ratios": "Airflow / ksched; the *_process_* ones compare like with like (process to process)",
        "wall_s": "each side from start to finish (ksched: bench.dag with its broker; Airflow: install, "
                  "PostgreSQL, startup and warm-up included)",
    }, "ksched": ks, "airflow": airflow, "ratios": ratios})
    if "error" in airflow:
        raise SystemExit(f"airflow: {airflow['error'][:2000]}")


if __name__ == "__main__":
    main(sys.argv[1:])
