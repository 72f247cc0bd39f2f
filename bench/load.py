"""Load test of `melanoma serve`: concurrent predictions with real ISIC images against a server on 127.0.0.1.

Starts the service in a subprocess (ONNX backend, SQLite audit trail in a temporary folder, a local webhook
receiver for the alerts), sends a bounded number of requests at a fixed concurrency, prints throughput,
p50/p95/p99 latency, errors, mean batch size and the server's resident memory; then restarts the server on the
same database and checks that every request is in the audit trail. Exit status 1 on any error or missing record.

    python bench/load.py                      # 400 requests, concurrency 16, one image each
    python bench/load.py --requests 500 --concurrency 32 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from melanoma.serve.testing import REPO_MODEL, ServerProcess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic-9class" / "Train"


class AlertCounter(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        type(self).received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def pick_images(root: Path, count: int) -> list[Path]:
    """`count` images spread over the class folders (sorted names: the same set every run)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    per = -(-count // len(folders))
    chosen = [p for folder in folders for p in sorted(folder.glob("*.jpg"))[:per]]
    return chosen[:count]


def run_load(url: str, images: list[Path], requests: int, concurrency: int) -> tuple[list, list, float]:
    """(latencies in s, responses' JSON or error strings, wall seconds)."""
    payloads = [(p.name, p.read_bytes()) for p in images]
    local = threading.local()

    def one(i: int):
        client = getattr(local, "client", None) or httpx.Client(timeout=120)
        local.client = client
        name, data = payloads[i % len(payloads)]
        start = time.perf_counter()
        try:
            response = client.post(url + "/v1/predict", files={"files": (name, data, "image/jpeg")},
                                   data={"case_ref": f"load-{i}"})
            result = response.json() if response.status_code == 200 else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            result = type(exc).__name__
        return time.perf_counter() - start, result

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(requests)))
    return [o[0] for o in outcomes], [o[1] for o in outcomes], time.perf_counter() - start


def audit_ids(url: str) -> set[int]:
    ids, offset = set(), 0
    while True:
        page = httpx.get(url + "/v1/audit", params={"limit": 1000, "offset": offset}, timeout=60).json()
        ids |= {r["record_id"] for r in page["records"]}
        offset += len(page["records"])
        if not page["records"] or offset >= page["total"]:
            return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO_MODEL))
    parser.add_argument("--data", default=str(DATA), help="class-folder dataset to draw images from")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--images", type=int, default=90, help="distinct images, cycled")
    parser.add_argument("--workers", type=int, default=1, help="melanoma serve --workers")
    args = parser.parse_args()

    images = pick_images(Path(args.data), args.images)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), AlertCounter)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="melanoma-load-") as tmp:
        db = f"sqlite:///{Path(tmp) / 'audit.sqlite'}"
        common = ["--model", args.model, "--db", db, "--workers", str(args.workers), "--state-dir", tmp]
        webhook = ["--alert-webhook", f"http://127.0.0.1:{receiver.server_address[1]}/alerts"]
        with ServerProcess(*common, *webhook, log=Path(tmp) / "server.log") as server:
            rss_idle = server.rss_mb()
            run_load(server.url, images[:4], 8, 4)  # warm-up (not counted; in the audit trail too)
            latencies, results, wall = run_load(server.url, images, args.requests, args.concurrency)
            rss_loaded = server.rss_mb()
            health = httpx.get(server.url + "/healthz").json()
            ok = [r for r in results if isinstance(r, dict)]
            alerts = [r["results"][0]["record_id"] for r in ok if r["results"][0]["melanoma_alert"]]
            deadline = time.monotonic() + 30
            while len({a["record_id"] for a in AlertCounter.received} & set(alerts)) < len(alerts) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
        with ServerProcess(*common, log=Path(tmp) / "server.log") as server:  # restart on the same database
            stored = audit_ids(server.url)
    receiver.shutdown()

    ms = np.array(latencies) * 1000
    errors = [r for r in results if not isinstance(r, dict)]
    sent_ids = {r["results"][0]["record_id"] for r in ok}
    received = {a["record_id"] for a in AlertCounter.received} & set(alerts)
    inference = health["inference"]
    print(f"melanoma serve load test: {args.requests} requests (1 image each, {len(images)} distinct ISIC images), "
          f"concurrency {args.concurrency}, --workers {args.workers}, {os.cpu_count()} CPU cores, "
          f"backend {health['model']['backend']}")
    print(f"  throughput      {args.requests / wall:.1f} requests/s ({wall:.1f} s)")
    print(f"  latency         p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, "
          f"p99 {np.percentile(ms, 99):.0f} ms, max {ms.max():.0f} ms")
    print(f"  errors          {len(errors)}" + (f" ({sorted(set(errors))[:5]})" if errors else ""))
    print(f"  batching        {inference['images']} images in {inference['batches']} model calls "
          f"(mean batch {inference['images'] / max(1, inference['batches']):.1f})")
    print(f"  server RSS      {rss_idle:.0f} MiB idle, {rss_loaded:.0f} MiB after the load; "
          f"torch imported: {health['torch_imported']}")
    print(f"  webhook         {len(received)}/{len(alerts)} melanoma alerts received by the local receiver")
    missing = sent_ids - stored
    print(f"  audit trail     {len(sent_ids) - len(missing)}/{len(sent_ids)} answered requests found after a restart")
    return 1 if errors or missing or len(received) < len(alerts) else 0


if __name__ == "__main__":
    sys.exit(main())
