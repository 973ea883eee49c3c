"""`ksched`: submit and inspect jobs, run the streams worker and the executor, manage a dev broker."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from ksched import config
from ksched.errors import ConfigError, KschedError


def _grant_roles(info: Any, settings: config.Settings) -> None:
    """An auth broker: ACLs for the roles of the installation `settings.prefix`, and each role's client file."""
    from dataclasses import replace

    from ksched import acl, devbroker

    admin_file = devbroker.client_properties(info.data_dir, "admin")
    admin = replace(settings, bootstrap_servers=info.bootstrap,
                    kafka=config.kafka_security({"KSCHED_KAFKA_CONFIG": str(admin_file)}))
    acl.apply(admin, admin, devbroker.ROLE_USERS)
    over = " over TLS" if devbroker.has_tls(info.data_dir) else ""
    print(f"SASL/SCRAM{over} and ACLs on; roles of the installation {settings.prefix!r} granted. Client settings:")
    for role, user in {"admin": "admin", **devbroker.ROLE_USERS}.items():
        print(f"  {role:9} KSCHED_KAFKA_CONFIG={devbroker.client_properties(info.data_dir, user)}")


def _dev_cluster(args: argparse.Namespace, settings: config.Settings) -> int:
    from ksched.devbroker import cluster

    data = Path(args.data) if args.data else settings.home / "cluster"
    if args.action == "up":
        info = cluster.up(data, nodes=args.nodes)
        print(f"{len(info.nodes)} nodes up at {info.bootstrap} (data {info.data_dir}); replication factor "
              f"{min(3, len(info.nodes))}, min.insync.replicas {min(2, len(info.nodes))}: set "
              f"KSCHED_BOOTSTRAP_SERVERS={info.bootstrap} KSCHED_REPLICATION_FACTOR={min(3, len(info.nodes))}")
    elif args.action == "down":
        print("cluster stopped" if cluster.down(data) else "no cluster running")
    else:
        state = cluster.status(data)
        if state is None:
            print("no cluster here")
            return 1
        for n in state.nodes:
            print(f"node {n.node_id} 127.0.0.1:{n.port} " + (f"pid {n.pid}" if n.pid else "stopped"))
        return 0 if all(n.pid for n in state.nodes) else 1
    return 0


def _dev_broker(args: argparse.Namespace, settings: config.Settings) -> int:
    from ksched import devbroker

    if args.nodes > 1:
        return _dev_cluster(args, settings)
    data = Path(args.data) if args.data else settings.home / "broker"
    if args.action == "up":
        port = args.port or int(settings.bootstrap_servers.rsplit(":", 1)[1])
        info = devbroker.up(data, port=port, auth=args.auth, tls=args.tls)
        print(f"broker up at {info.bootstrap} (pid {info.pid}, data {info.data_dir})")
        if (info.data_dir / "users.json").exists():
            _grant_roles(info, settings)
        elif devbroker.has_tls(info.data_dir):
            print(f"TLS on; client settings: KSCHED_KAFKA_CONFIG={devbroker.client_properties(info.data_dir, None)}")
    elif args.action == "down":
        print("broker stopped" if devbroker.down(data) else "no broker running")
    else:
        running = devbroker.status(data)
        print(f"broker at {running.bootstrap} (pid {running.pid})" if running else "no broker running")
        return 0 if running else 1
    return 0


def _topics(args: argparse.Namespace, settings: config.Settings) -> int:
    from ksched import kafka
    from ksched.topics import ensure_topics, pool_topic_specs, pools_in, topic_specs

    pools = tuple(sorted(pools_in(settings, kafka.admin(settings).list_topics(timeout=30).topics) - {""}))
    created = ensure_topics(settings, pools=pools)
    specs = topic_specs(settings) + [sp for pool in pools for sp in pool_topic_specs(settings, pool)]
    for spec in specs:
        mark = "created" if spec.name in created else "exists"
        policy = spec.config.get("cleanup.policy", "delete")
        retention = spec.config.get("retention.ms", "")
        kept = "" if policy == "compact" else ("forever" if retention == "-1" else f"{int(retention) // 3_600_000}h")
        print(f"{spec.name:44} {spec.partitions:3d} partitions  {policy:7} {kept:>7}  key: {spec.key}  [{mark}]")
    return 0


def _streams(args: argparse.Namespace, settings: config.Settings) -> int:
    from ksched.streams.web import exposure_error
    from ksched.streams.worker import run

    if args.web_port and (why := exposure_error(args.web_host, settings, args.web_open)):
        raise ConfigError(why)
    return run(settings, name=args.name, web_port=args.web_port, loglevel=args.loglevel, web_host=args.web_host,
               web_url=args.web_url)


def _executor(args: argparse.Namespace, settings: config.Settings) -> int:
    from ksched.artifacts import open_store
    from ksched.executor.service import Executor, ExecutorConfig
    from ksched.topics import ensure_topics

    ensure_topics(settings, pools=(args.pool,) if args.pool else ())
    ex = Executor(settings, open_store(settings.artifacts, settings.s3_endpoint_url),
                  ExecutorConfig(slots=args.slots, staging=args.staging, prefetch=args.prefetch,
                                 max_artifact_bytes=args.max_artifact_bytes, pool=args.pool,
                                 claim_timeout_s=args.claim_timeout, isolated=not args.uncontained,
                                 job_uid_base=args.job_uid_base, shared=tuple(Path(p) for p in args.share),
                                 secrets=args.secrets, offers=not args.no_offers,
                                 **({} if args.early_from is None else {"early_from": args.early_from})),
                  executor_id=args.id)

    def stop(signum: int, frame: Any) -> None:
        ex.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ex.run()
    print(f"executor {ex.id} stopped: {ex.stats.summary()}", file=sys.stderr)
    return 0


def _analytics(args: argparse.Namespace, settings: config.Settings) -> int:
    import json

    if args.connector:
        from ksched.analytics.connector import jdbc_sink

        cfg = jdbc_sink(settings, args.jdbc_url, args.db_user, args.db_password)
        print(json.dumps({"name": cfg.pop("name"), "config": cfg}, indent=2))
        return 0
    from ksched.analytics.projector import main as project

    logging.getLogger("ksched").setLevel(logging.INFO)
    return project(settings, once=args.once, group=args.group)


def _demo(args: argparse.Namespace, settings: config.Settings) -> int:
    from .demo import run_demo

    return run_demo(settings, keep_running=args.keep_running, fresh=not args.reuse, analytics=args.analytics)


def build_parser() -> argparse.ArgumentParser:
    from . import commands as c

    p = argparse.ArgumentParser(prog="ksched", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("submit", c.cmd_submit, "submit (create or update) a job from a YAML file; several files: all are "
                                     "validated first, then submitted in bulk records without waiting")
    sp.add_argument("file", nargs="+")
    sp.add_argument("--wait", action="store_true", help="wait until the scheduler accepts or rejects it (a one-off "
                                                       "that runs on submission waits by default, to print its run id)")
    sp.add_argument("--no-wait", action="store_true", help="do not wait, not even for a one-off's run id")
    sp.add_argument("--timeout", type=float, default=30.0)
    sp.add_argument("--by", default="", help="who submits (recorded in the event)")
    sp = add("upload", c.cmd_upload, "store a binary in the artifact store; prints its digest")
    sp.add_argument("file")
    sp = add("status", c.cmd_status, "a job and its runs with states, exit codes and timings")
    sp.add_argument("job")
    sp.add_argument("--json", action="store_true")
    for name, fn, verb in (("pause", c.cmd_pause, "pause"), ("resume", c.cmd_resume, "resume"),
                           ("delete", c.cmd_delete, "delete")):
        sp = add(name, fn, f"{verb} a job")
        sp.add_argument("job")
        sp.add_argument("--timeout", type=float, default=15.0)
        if name == "pause":
            sp.add_argument("--reason", default="")
    sp = add("trigger", c.cmd_trigger, "run a job now, outside its schedule")
    sp.add_argument("job")
    sp = add("backfill", c.cmd_backfill, "fire a cron job's past occurrences in a range as runs of their own "
                                         "(trigger BACKFILL); repeated, it fires nothing twice")
    sp.add_argument("job")
    sp.add_argument("--from", dest="from_", required=True, metavar="T1", help="ISO-8601 instant or epoch ms")
    sp.add_argument("--to", required=True, metavar="T2", help="ISO-8601 instant or epoch ms (inclusive)")
    sp.add_argument("--max-active", type=int, default=1, help="backfill runs at once (overlap allow; else 1)")
    sp.add_argument("--timeout", type=float, default=30.0)
    sp = add("cancel", c.cmd_cancel, "cancel a run (running attempts are stopped)")
    sp.add_argument("run")
    sp.add_argument("--reason", default="")
    sp = add("runs", c.cmd_runs, "a job's runs as a grid of task states (runs x tasks)")
    sp.add_argument("job")
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--json", action="store_true")
    sp = add("rerun", c.cmd_rerun, "run a finished run again from a task: it and everything downstream")
    sp.add_argument("run")
    sp.add_argument("--from", dest="from_task", required=True, metavar="TASK")
    sp.add_argument("--timeout", type=float, default=15.0)
    from . import audit

    sp = add("replay", audit.cmd_replay, "rebuild the state from the inbox, check the invariants, compare with "
             "the decision log; exits 1 naming the offending events if anything is wrong")
    sp.add_argument("--until", help="replay only what happened up to this instant (ISO-8601 or epoch ms)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--save", metavar="FILE", help="also write the records read to FILE (JSON lines)")
    sp.add_argument("--from-file", metavar="FILE", help="replay records saved with --save instead of the topics")
    sp = add("history", audit.cmd_history, "a job's inbox records and decisions, in order")
    sp.add_argument("job")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--since", default=None, metavar="T", help="from this instant on (ISO-8601 or epoch ms)")
    sp.add_argument("--until", default=None, metavar="T", help="up to this instant")
    sp.add_argument("--limit", type=int, default=0, help="a page of at most N records (0: all); says where the "
                                                          "next page starts")
    sp = add("wait", audit.cmd_wait, "follow a run until it ends; exit 1 if it failed or was cancelled")
    sp.add_argument("run")
    sp.add_argument("--timeout", type=float, default=3600.0)
    sp.add_argument("--interval", type=float, default=1.0)
    sp = add("next", c.cmd_next, "the next fire instants of a job (a job id or a job file)")
    sp.add_argument("job")
    sp.add_argument("--count", type=int, default=5)
    sp.add_argument("--json", action="store_true")
    sp = add("logs", c.cmd_logs, "the output of a run's attempts")
    sp.add_argument("run")
    sp.add_argument("--task")
    sp.add_argument("--attempt", type=int)
    add("dlq", c.cmd_dlq, "list dead-lettered inbox records with their reasons")
    add("topics", _topics, "create missing topics and list them with keys and policies")
    sp = add("streams", _streams, "run a streams worker (the scheduler agent and the ticker)")
    sp.add_argument("--name", default="worker", help="worker name; each worker on a host needs its own")
    sp.add_argument("--web-port", type=int, default=None, help="serve the HTTP API, metrics and UI on this port")
    sp.add_argument("--web-host", default="127.0.0.1",
                    help="the address the API listens on (default loopback: only this host reaches it)")
    sp.add_argument("--web-open", action="store_true",
                    help="serve the API beyond this host with no token (refused otherwise)")
    sp.add_argument("--web-url", default=None,
                    help="where the other workers reach this one's API (default http://WEB_HOST:WEB_PORT)")
    sp.add_argument("--loglevel", default="warning")
    sp = add("executor", _executor, "run an executor")
    sp.add_argument("--slots", type=int, default=4, help="processes run at once")
    sp.add_argument("--staging", type=int, default=1024,
                    help="attempts fired ahead of their instant held until they start")
    sp.add_argument("--prefetch", type=int, default=-1,
                    help="claims beyond the free slots, to hide the claim round trip (-1: as many as slots; "
                         "0: strict priority order, at some throughput)")
    sp.add_argument("--id", default=None, help="executor id (default: host-pid-random)")
    sp.add_argument("--pool", default="", help="take only tasks labelled pool: NAME (e.g. bigger machines)")
    sp.add_argument("--job-uid-base", type=int, default=200_000,
                    help="jobs of a root executor run as uids from this one up, one per attempt (default 200000)")
    sp.add_argument("--share", action="append", default=[], metavar="DIR",
                    help="a host directory jobs see read-write at the same path (repeatable)")
    sp.add_argument("--secrets", default="", metavar="DIR|s3://BUCKET/PREFIX",
                    help="where env_from: {NAME: secret:<name>} resolves: a file per secret (hidden from jobs)")
    sp.add_argument("--uncontained", action="store_true",
                    help="run jobs as this executor's own user with no namespace (trusted jobs only)")
    sp.add_argument("--no-offers", action="store_true",
                    help="never offer a freed slot to the next task of a DAG with a completion: every attempt is "
                         "claimed from the ready topics")
    sp.add_argument("--early-from", type=int, default=None, metavar="N",
                    help="with N claims waiting for answers (a burst; default 64), create each new claim's process "
                         "at once, held until its grant (0: always; -1: only once granted)")
    sp.add_argument("--claim-timeout", type=float, default=30.0,
                    help="seconds a claim waits for the scheduler's answer before its slot is used otherwise")
    sp.add_argument("--max-artifact-bytes", type=int, default=512 * 1024 * 1024,
                    help="refuse artifacts larger than this (the task fails with ARTIFACT_TOO_LARGE)")
    sp = add("analytics", _analytics, "keep the analytics topics (flat rows of runs, tasks, attempts, decisions) "
                                      "current for a Kafka Connect sink; --connector prints the sink's config")
    sp.add_argument("--connector", action="store_true",
                    help="print the JDBC sink connector's configuration for Connect's REST API, and exit")
    sp.add_argument("--jdbc-url", default="jdbc:postgresql://localhost:5432/analytics")
    sp.add_argument("--db-user", default="ksched")
    sp.add_argument("--db-password", default="${file:/etc/kafka-connect/secrets.properties:password}",
                    help="as written into the config (default: a Connect config-provider reference)")
    sp.add_argument("--once", action="store_true",
                    help="project what the topics hold now, then exit (a batch catch-up); default: run on")
    sp.add_argument("--group", default="", help="consumer group (default <prefix>-analytics)")
    sp = add("demo", _demo, "start a local broker, a streams worker and an executor, and run example jobs")
    sp.add_argument("--keep-running", action="store_true", help="leave everything running at the end")
    sp.add_argument("--reuse", action="store_true", help="keep the demo's broker data from an earlier run")
    sp.add_argument("--analytics", action="store_true",
                    help="also land the history in PostgreSQL through Kafka Connect and count the runs by SQL")
    dev = add("dev", lambda a, s: 2, "development helpers")
    dsub = dev.add_subparsers(dest="what", required=True)
    b = dsub.add_parser("broker", help="a local single-node Apache Kafka broker (KRaft)")
    b.add_argument("action", choices=["up", "down", "status"])
    b.add_argument("--nodes", type=int, default=1,
                   help="nodes (KRaft, combined controller+broker); 3: replication factor 3, min.insync.replicas 2")
    b.add_argument("--auth", action="store_true",
                   help="SASL/SCRAM users and ACLs per role (streams, executor, submitter); kept for this data dir")
    b.add_argument("--tls", action="store_true",
                   help="TLS on the client listener, with a certificate authority made for this data dir (openssl)")
    b.add_argument("--data", default=None, help="data directory (default $KSCHED_HOME/broker)")
    b.add_argument("--port", type=int, default=None)
    b.set_defaults(fn=_dev_broker)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load()
        code: int = args.fn(args, settings)
        return code
    except KschedError as exc:
        print(f"ksched: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
