"""`backflow serve` measured: scheduling accuracy, idle memory, and the API under load.

    bash benches/setup.sh                 # DuckDB from PyPI + release build
    apt-get install -y wrk                # for `load`
    python3 benches/serve.py ticks        # 100 syncs on "every 5s" for 5 minutes
    python3 benches/serve.py idle         # resident memory of an idle server with 100 syncs
    python3 benches/serve.py load --rows 10000000   # GET /api/syncs under wrk during a run

ticks: every sync reads a 10-row CSV into its own SQLite file. Lateness of each tick (how long
after its due time the scheduler started it) comes from the server's own histogram
(`backflow_schedule_lateness_seconds`, quantiles as the bucket bound they fall in); ticks
missed are the ticks due in the window that the scheduler did not start (nor skip as still
running). Runs in history are counted too; those still queued at the cut-off are not in it yet.

load: one sync of the generated Parquet model (generate.py) into a Parquet file destination,
started through the API twice on fresh state: alone, then while wrk hammers `GET /api/syncs`
(2 threads, 16 connections, on the same 2 cores, for about as long as the run takes under load).
Reports wrk's p50/p99 latency and the run's slowdown (the run's own duration, from history,
with load / without).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "backflow")


def start(project, *extra):
    """Start `backflow serve` on a free port; returns (process, base URL)."""
    p = subprocess.Popen(
        [BIN, "serve", "--project", project, "--listen", "127.0.0.1:0", "-q", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in p.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            import threading

            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    sys.exit("backflow serve did not start")


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def post(url, body=b""):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def stop(p):
    p.terminate()
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()


def many_syncs(dir, n, schedule):
    if os.path.exists(dir):
        shutil.rmtree(dir)
    os.makedirs(dir)
    with open(os.path.join(dir, "people.csv"), "w") as f:
        f.write("id,name\n" + "".join(f"{i},name {i}\n" for i in range(10)))
    parts = ['[sources.people]\ntype = "csv"\npath = "people.csv"\n']
    for i in range(n):
        parts.append(
            f'[destinations.d{i}]\ntype = "sqlite"\npath = "out/d{i}.db"\n\n'
            f'[syncs.s{i}]\nfrom = "people"\nto = "d{i}"\nobject = "people"\nbehavior = "upsert"\n'
            f'key = "id"\n{schedule}\n'
        )
    with open(os.path.join(dir, "backflow.toml"), "w") as f:
        f.write("\n".join(parts))


def quantile_from_histogram(metrics, name, q):
    """The bucket bound the q-quantile falls in, from an OpenMetrics histogram."""
    buckets = []
    for line in metrics.splitlines():
        m = re.match(rf'{name}_bucket\{{le="([^"]+)"\}} (\S+)', line)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    total = buckets[-1][1] if buckets else 0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound, int(total)
    return None, int(total)


def ticks(args):
    work = tempfile.mkdtemp(prefix="bf-ticks-")
    project = os.path.join(work, "p")
    many_syncs(project, args.syncs, 'schedule = "every 5s"')
    p, url = start(project, "--max-concurrent", "2")
    began = time.time()
    time.sleep(args.seconds)
    metrics = get(url + "/metrics")
    counted = {}
    for i in range(args.syncs):
        counted[f"s{i}"] = json.loads(get(f"{url}/api/syncs/s{i}/runs?limit=1000"))
    elapsed = time.time() - began
    stop(p)
    p50, n = quantile_from_histogram(metrics, "backflow_schedule_lateness_seconds", 0.5)
    p99, _ = quantile_from_histogram(metrics, "backflow_schedule_lateness_seconds", 0.99)
    expected = int(args.seconds // 5) + 1
    ran = sum(1 for rs in counted.values() for r in rs if r["status"] != "skipped")
    skipped_running = sum(
        1 for rs in counted.values() for r in rs if r["status"] == "skipped" and "still going" in (r["error"] or "")
    )
    failed = sum(1 for rs in counted.values() for r in rs if r["status"] not in ("succeeded", "skipped"))
    # Ticks the scheduler started (its lateness histogram counts each) against the ticks due
    # in the window. History lags behind: runs queued behind --max-concurrent at the cut-off
    # are not in it yet.
    missed = max(0, expected * args.syncs - n)
    result = {
        "syncs": args.syncs,
        "seconds": round(elapsed),
        "ticks_fired": n,
        "ticks_due_per_sync": expected,
        "runs_in_history": ran,
        "skipped_still_running": skipped_running,
        "failed": failed,
        "missed": missed,
        "lateness_p50_at_most_s": p50,
        "lateness_p99_at_most_s": p99,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n| syncs | window | ticks | runs | skipped (still running) | missed | failed | lateness p50 | p99 |\n"
        f"|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {args.syncs} | {args.seconds}s | {n} | {ran} | {skipped_running} | {missed} | {failed} | ≤ {p50 * 1000:.0f} ms | ≤ {p99 * 1000:.0f} ms |"
    )
    shutil.rmtree(work, ignore_errors=True)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def idle(args):
    work = tempfile.mkdtemp(prefix="bf-idle-")
    project = os.path.join(work, "p")
    many_syncs(project, args.syncs, "")
    p, url = start(project)
    time.sleep(5)
    get(url + "/api/syncs")
    time.sleep(1)
    rss = rss_mib(p.pid)
    stop(p)
    print(json.dumps({"syncs": args.syncs, "idle_rss_mib": round(rss, 1)}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def one_run(project, model, load_seconds=None):
    if os.path.exists(project):
        shutil.rmtree(project)
    os.makedirs(project)
    os.symlink(model, os.path.join(project, "model.parquet"))
    with open(os.path.join(project, "backflow.toml"), "w") as f:
        f.write(
            '[sources.customers]\ntype = "parquet"\npath = "model.parquet"\n\n'
            '[destinations.lake]\ntype = "file"\npath = "out"\nformat = "parquet"\nmode = "changes"\n\n'
            '[syncs.s]\nfrom = "customers"\nto = "lake"\nobject = "customers"\nkey = "id"\nbehavior = "mirror"\n'
        )
    p, url = start(project)
    wrk = None
    if load_seconds:
        wrk = subprocess.Popen(
            ["wrk", "-t2", "-c16", f"-d{load_seconds}s", "--latency", url + "/api/syncs"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
    run_id = post(url + "/api/syncs/s/runs")["run_id"]
    while True:
        run = json.loads(get(f"{url}/api/runs/{run_id}"))
        if run["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    if run["status"] != "succeeded":
        sys.exit(f"the run failed: {run}")
    took = (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()
    latency = None
    if wrk:
        # wrk prints its figures when its time is up (it was sized to end with the run).
        out = wrk.communicate()[0]
        latency = {m.group(1): m.group(2) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
        reqs = re.search(r"Requests/sec:\s+(\S+)", out)
        latency["requests_per_s"] = reqs.group(1) if reqs else None
    stop(p)
    return took, latency


def load(args):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from generate import generate

    data = os.path.join(ROOT, "benches", "data")
    v1, _ = generate(args.rows, data)
    work = tempfile.mkdtemp(prefix="bf-load-")
    alone, _ = one_run(os.path.join(work, "alone"), os.path.abspath(v1))
    # wrk for about as long as the run takes under load, so that it measures the API while
    # the run goes (it shares the machine's cores with the run).
    loaded, latency = one_run(os.path.join(work, "loaded"), os.path.abspath(v1), load_seconds=max(5, int(alone * 1.5)))
    result = {
        "rows": args.rows,
        "run_alone_s": round(alone, 2),
        "run_under_load_s": round(loaded, 2),
        "slowdown": round(loaded / alone, 2),
        "get_syncs_latency": latency,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("ticks")
    t.add_argument("--syncs", type=int, default=100)
    t.add_argument("--seconds", type=int, default=300)
    i = sub.add_parser("idle")
    i.add_argument("--syncs", type=int, default=100)
    lo = sub.add_parser("load")
    lo.add_argument("--rows", type=int, default=10_000_000)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release")
    {"ticks": ticks, "idle": idle, "load": load}[args.what](args)


if __name__ == "__main__":
    main()
