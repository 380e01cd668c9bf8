"""backflow into a local HTTP API that answers at once, against wrk sending the same requests.

    bash benches/setup.sh        # release build, duckdb for the model
    apt-get install wrk          # the baseline
    python3 benches/api.py --rows 200000 --per-record-rows 50000

The model is the benchmark's synthetic `customers` (generate.py). The API is
`benches/api_server.js` (Node's http module: reads each body whole, answers `200 {}`). Two
scenarios, each an initial `upsert` of every row:

  batch_size 100  POST /customers/batch, 100 records per request
  per_record      PUT /customers/{key}, one record per request

The baseline is wrk against the same server with the same number of connections as backflow's
`concurrency`, sending the very bytes backflow sent (captured from a small run): the rate at
which this server, on this machine, completes such requests. The ratio is backflow's time per
record over wrk's (1.0: backflow costs nothing beyond the round trip; the server's work is in
both).
"""

import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import generate  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "backflow")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Api:
    def __init__(self, node, dump=None):
        self.port = free_port()
        cmd = [node, os.path.join(HERE, "api_server.js"), str(self.port)] + ([dump] if dump else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening"):
            sys.exit(f"the API did not start: {line}")

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__stats", timeout=10) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def project(dirpath, model, port, scenario, concurrency):
    shutil.rmtree(dirpath, ignore_errors=True)
    os.makedirs(dirpath)
    os.symlink(model, os.path.join(dirpath, "model.parquet"))
    if scenario == "batch":
        endpoint = 'method = "POST"\npath = "/{object}/batch"\nbatch_size = 100'
    else:
        endpoint = 'method = "PUT"\npath = "/{object}/{key}"'
    with open(os.path.join(dirpath, "backflow.toml"), "w") as f:
        f.write(
            f"""
[sources.customers]
type = "parquet"
path = "model.parquet"

[destinations.api]
type = "http"
base_url = "http://127.0.0.1:{port}"
concurrency = {concurrency}

[destinations.api.upsert]
{endpoint}

[syncs.s]
from = "customers"
to = "api"
object = "customers"
behavior = "upsert"
key = "id"
"""
        )
    return dirpath


def backflow(proj, extra=()):
    start = time.perf_counter()
    p = subprocess.run([BIN, "run", "s", "--json", "--project", proj, *extra], capture_output=True)
    t = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"backflow failed:\n{p.stdout.decode()}\n{p.stderr.decode()}")
    report = json.loads(p.stdout.decode().strip().splitlines()[-1])
    if report["status"] != "succeeded":
        sys.exit(f"backflow failed: {report}")
    return t, report


def wrk_rate(wrk, port, request, concurrency, seconds):
    """Requests per second wrk completes sending `request` (method, url, body) with
    `concurrency` connections."""
    script = os.path.join(os.path.dirname(request["file"]), "replay.lua")
    with open(script, "w") as f:
        f.write(f"wrk.method = {json.dumps(request['method'])}\n")
        f.write(f"wrk.body = {json.dumps(request['body'])}\n")
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
        key = request["headers"].get("idempotency-key")
        if key:
            f.write(f'wrk.headers["Idempotency-Key"] = {json.dumps(key)}\n')
    url = f"http://127.0.0.1:{port}{request['url']}"
    out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", script, url],
                         capture_output=True, check=True).stdout.decode()
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not m:
        sys.exit(f"cannot read wrk's output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"wrk got errors:\n{out}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000, help="rows for batch_size 100")
    ap.add_argument("--per-record-rows", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=4, help="the destination's `concurrency` and wrk's connections")
    ap.add_argument("--seconds", type=int, default=5, help="wrk's duration")
    ap.add_argument("--node", default=shutil.which("node") or "node")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "bench-data"))
    args = ap.parse_args()

    work = os.path.join(args.data, "http")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    results = []
    for scenario, rows in [("batch", args.rows), ("per_record", args.per_record_rows)]:
        small, _ = generate(1000, args.data)
        model, _ = generate(rows, args.data)
        # The requests backflow sends, captured from a small run.
        dump = os.path.join(work, f"dump_{scenario}")
        os.makedirs(dump)
        api = Api(args.node, dump)
        backflow(project(os.path.join(work, f"small_{scenario}"), small, api.port, scenario, args.concurrency))
        api.stop()
        files = glob.glob(os.path.join(dump, "*.json"))
        if len(files) != 1:
            sys.exit(f"expected one request shape, found {files}")
        request = json.load(open(files[0]))
        request["file"] = files[0]

        api = Api(args.node)
        t, report = backflow(project(os.path.join(work, scenario), model, api.port, scenario, args.concurrency))
        stats = api.stats()
        per_request = 100 if scenario == "batch" else 1
        # (A request never spans two destination batches of 16,384 rows: each batch ends
        # with a shorter request.)
        expected = -(-rows // per_request)
        sent = report["created"] + report["updated"]
        if sent != rows or stats["requests"] < expected or report["rejected"]:
            sys.exit(f"{scenario}: backflow sent {sent} of {rows} records in {stats['requests']} requests: {report}")
        rate = wrk_rate(args.wrk, api.port, request, args.concurrency, args.seconds)
        api.stop()
        b_rate = rows / t
        w_rate = rate * per_request
        results.append({"scenario": scenario, "rows": rows, "requests": stats["requests"],
                        "body_bytes": stats["bytes"], "backflow_s": t, "backflow_records_s": b_rate,
                        "wrk_requests_s": rate, "wrk_records_s": w_rate, "report": report})

    print(f"\nHTTP API on 127.0.0.1 (Node), concurrency {args.concurrency}\n")
    print("| scenario | records | requests | backflow s | backflow records/s | wrk records/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['scenario']} | {r['rows']:,} | {r['requests']:,} | {r['backflow_s']:.2f} | "
              f"{r['backflow_records_s']:,.0f} | {r['wrk_records_s']:,.0f} | {r['wrk_records_s'] / r['backflow_records_s']:.2f} |")
    json.dump(results, open(os.path.join(work, "results.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
