"""Soak test of a real server on loopback: mixed traffic, no 5xx, flat memory, clean stop.

    python -m benchmarks.soak [--requests 10000] [--concurrency 8] [--threads 8]

Starts gunicorn exactly as the Docker image does (``gunicorn tag_backend.wsgi:app``, one worker)
with tiny random-weight models of the real architectures, Basic auth and a webhook secret, and
sends a mix of ``/predict`` (small images; answered from the stored predictions when the
``model_version`` did not change), ``/webhook`` (annotation events; a share with the secret as
``?token=``), ``/metrics`` and ``/health`` at a fixed concurrency. Reports per-route latency
(p50/p99), every status code, the server's RSS over time (the worker and its CRF helper),
whether the webhook secret reached the access log, and whether any process was left after
SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

from .procfs import alive, descendants, rss_mb

SECRET = "soak-secret-7f3a"
AUTH = ("soak", "soak-pass")
#: Share of each request kind (predict is given by --predict-share, the rest scaled to fit).
MIX = {"webhook": 0.6, "health": 0.22, "metrics": 0.18}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prepare(root: Path, n_images: int) -> tuple[dict, list[str]]:
    from PIL import Image

    from tag_backend.random_models import save_random_clip, save_random_dino

    save_random_dino(root / "dino")
    clip = save_random_clip(root / "clip")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_images):
        arr = np.zeros((96, 96, 3), np.uint8)
        arr[:, :48] = rng.integers(0, 255, 3)
        arr[:, 48:] = rng.integers(0, 255, 3)
        Image.fromarray(arr).save(images / f"{i}.png")
        paths.append(str(images / f"{i}.png"))
    env = {
        **os.environ,
        "TAG_PRESET": "fast", "TAG_DINO_MODEL": str(root / "dino"), "TAG_CLIP_MODEL": clip,
        "TAG_DEVICE": "cpu", "TAG_DTYPE": "float32", "TAG_DATA_DIR": str(root / "data"),
        "TAG_ALLOWED_LOCAL_ROOTS": str(images), "BASIC_AUTH_USER": AUTH[0],
        "BASIC_AUTH_PASS": AUTH[1], "TAG_WEBHOOK_SECRET": SECRET, "HF_HUB_OFFLINE": "1",
        "TAG_LOG_LEVEL": "WARNING",
    }
    return env, paths


def _request(session: requests.Session, base: str, kind: str, n: int, images: list[str],
             config: str) -> tuple[str, int, float]:
    start = time.perf_counter()
    if kind == "health":
        r = session.get(base + "/health", timeout=60)
    elif kind == "metrics":
        r = session.get(base + "/metrics", auth=AUTH, timeout=60)
    elif kind == "predict":
        i = n % len(images)
        r = session.post(base + "/predict", auth=AUTH, timeout=120, json={
            "tasks": [{"id": i + 1, "data": {"image": images[i]}}], "label_config": config})
    else:
        payload = {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                   "task": {"id": n, "data": {"image": images[n % len(images)]}},
                   "annotation": {"id": n, "result": [], "updated_at": "2024-01-01T00:00:00Z"}}
        if n % 2:
            r = session.post(f"{base}/webhook?token={SECRET}", json=payload, timeout=60)
        else:
            r = session.post(base + "/webhook", json=payload, timeout=60,
                             headers={"X-Tag-Webhook-Secret": SECRET})
    return kind, r.status_code, time.perf_counter() - start


def run(requests_total: int, concurrency: int, threads: int, n_images: int,
        predict_share: float) -> dict:
    from tag_backend.ls import recommended_label_config

    config = recommended_label_config()
    root = Path(tempfile.mkdtemp(prefix="tag-soak-"))
    env, images = _prepare(root, n_images)
    port = _free_port()
    access_log = root / "access.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", str(threads), "--timeout", "0", "--access-logfile", str(access_log),
         "tag_backend.wsgi:app"],
        env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "wb"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(base + "/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not start; see {root / 'server.log'}")
            time.sleep(0.5)
        # Warm the engine (model load, first image) so the soak measures steady state.
        requests.post(base + "/predict", auth=AUTH, timeout=600, json={
            "tasks": [{"id": 1, "data": {"image": images[0]}}], "label_config": config})
        rng = random.Random(0)
        mix = {k: v * (1 - predict_share) for k, v in MIX.items()} | {"predict": predict_share}
        kinds = rng.choices(list(mix), weights=list(mix.values()), k=requests_total)
        statuses: Counter = Counter()
        latencies: dict[str, list[float]] = defaultdict(list)
        rss: list[tuple[float, float]] = []
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                rss.append((time.monotonic() - started, rss_mb(descendants(server.pid))))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        local = threading.local()

        def one(job):
            n, kind = job
            if not hasattr(local, "session"):
                local.session = requests.Session()
            return _request(local.session, base, kind, n + 10, images, config)

        with ThreadPoolExecutor(concurrency) as pool:
            for kind, status, seconds in tqdm(pool.map(one, enumerate(kinds)),
                                              total=requests_total, desc="soak", unit="req"):
                statuses[(kind, status)] += 1
                latencies[kind].append(seconds)
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
        helpers = descendants(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    time.sleep(3)
    leftover = sorted(p for p in helpers if alive(p))
    quarter = max(1, len(rss) // 4)
    first = float(np.median([m for _, m in rss[:quarter]])) if rss else 0.0
    last = float(np.median([m for _, m in rss[-quarter:]])) if rss else 0.0
    return {
        "requests": requests_total, "concurrency": concurrency, "gunicorn_threads": threads,
        "seconds": round(elapsed, 1), "requests_per_second": round(requests_total / elapsed, 1),
        "status": {f"{k} {s}": c for (k, s), c in sorted(statuses.items())},
        "server_errors": sum(c for (_, s), c in statuses.items() if s >= 500),
        "latency_ms": {
            k: {"n": len(v), "p50": round(1000 * float(np.percentile(v, 50)), 1),
                "p99": round(1000 * float(np.percentile(v, 99)), 1),
                "max": round(1000 * max(v), 1)}
            for k, v in sorted(latencies.items())
        },
        "rss_mb": {"first_quarter_median": round(first, 1), "last_quarter_median": round(last, 1),
                   "max": round(max((m for _, m in rss), default=0.0), 1),
                   "samples": len(rss)},
        "server_processes_during_soak": len(helpers) + 1,
        "left_after_sigterm": leftover,
        "secret_in_access_log": SECRET in access_log.read_text(errors="replace"),
        "access_log_lines": sum(1 for _ in access_log.open(errors="replace")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads")
    parser.add_argument("--images", type=int, default=20, help="distinct predict images")
    parser.add_argument("--predict-share", type=float, default=0.03,
                        help="share of /predict requests (each runs the engine: seconds on CPU)")
    args = parser.parse_args()
    report = run(args.requests, args.concurrency, args.threads, args.images, args.predict_share)
    print(json.dumps(report, indent=2))
    if report["server_errors"] or report["left_after_sigterm"] or report["secret_in_access_log"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
