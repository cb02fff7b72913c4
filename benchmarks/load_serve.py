"""Load test of `lunakit serve`: N concurrent single-crop clients for T seconds, batching on vs off.

Starts the server twice on loopback (127.0.0.1, a free port), once with --max-batch 64 and once
with --max-batch 1 (no batching), each time: warm up, then N clients each send one crop
(application/octet-stream), wait for the answer, send the next, until T seconds have passed;
requests still in flight then are awaited and counted. The server is stopped with SIGTERM and
must exit 0. Prints JSON: requests/s, p50/p99 latency, mean batch size (from the server's
/metrics), errors, per mode, and the throughput ratio.

    .venv/bin/python benchmarks/load_serve.py [--bundle B] [--clients 64] [--duration 20]

Without --bundle, a bundle of freshly initialised (seeded) models is written to a temporary
folder: the speed of a model does not depend on its weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def seeded_bundle(folder: Path) -> Path:
    from lunakit.bundle import export_bundle
    from lunakit.models.checkpoint import write_untrained_checkpoints

    return export_bundle(folder / "bundle", write_untrained_checkpoints(folder, ("seg", "cls"), seed=0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric_values(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


class Server:
    def __init__(
        self, bundle: Path, max_batch: int, max_wait_ms: float, max_queue: int, device: str, log: Path
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.log = open(log, "w")
        command = [
            sys.executable,
            "-m",
            "lunakit.cli",
            "serve",
            "--bundle",
            str(bundle),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-batch",
            str(max_batch),
            "--max-wait-ms",
            str(max_wait_ms),
            "--max-queue",
            str(max_queue),
            "--device",
            device,
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    async def wait_ready(self, client, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}: {self.log_path.read_text()}")
            try:
                if (await client.get(self.url + "/readyz", timeout=2)).status_code == 200:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout} s")

    async def metrics(self, client) -> dict[str, float]:
        return metric_values((await client.get(self.url + "/metrics", timeout=30)).text)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log.close()
        return code


async def run_mode(bundle: Path, max_batch: int, args: argparse.Namespace, workdir: Path) -> dict:
    import httpx

    crop = np.random.default_rng(0).normal(-500, 400, size=(1, 32, 48, 48)).astype("<f4").tobytes()
    headers = {"Content-Type": "application/octet-stream", "X-Shape": "1,32,48,48"}
    server = Server(
        bundle, max_batch, args.max_wait_ms, args.max_queue, args.device, workdir / f"server_batch{max_batch}.log"
    )
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(args.request_timeout)) as client:
        try:
            await server.wait_ready(client)
            # warm-up: TorchScript specialises on its first calls; a burst gives the server large batches too
            for _ in range(2):
                await asyncio.gather(
                    *(
                        client.post(server.url + "/v1/classify", content=crop, headers=headers)
                        for _ in range(min(args.clients, max_batch, 16))
                    )
                )
            before = await server.metrics(client)
            latencies: list[float] = []
            errors: dict[str, int] = {}
            started = time.perf_counter()
            end = started + args.duration
            last_done = started

            async def one_client() -> None:
                nonlocal last_done
                while time.perf_counter() < end:
                    sent = time.perf_counter()
                    try:
                        response = await client.post(server.url + "/v1/classify", content=crop, headers=headers)
                        status = str(response.status_code)
                        ok = response.status_code == 200 and len(response.json()["p_nodule"]) == 1
                    except httpx.HTTPError as exc:
                        status, ok = type(exc).__name__, False
                    done = time.perf_counter()
                    last_done = max(last_done, done)
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors[status] = errors.get(status, 0) + 1

            await asyncio.gather(*(one_client() for _ in range(args.clients)))
            wall = last_done - started
            after = await server.metrics(client)
        finally:
            exit_code = server.stop()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("lunakit_batch_size_requests_count")
    latency_ms = np.array(latencies) * 1000.0
    return {
        "max_batch": max_batch,
        "requests_ok": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        "latency_p50_ms": round(float(np.percentile(latency_ms, 50)), 1) if len(latency_ms) else None,
        "latency_p99_ms": round(float(np.percentile(latency_ms, 99)), 1) if len(latency_ms) else None,
        "model_calls": int(batches),
        "mean_batch_requests": round(delta("lunakit_batch_size_requests_sum") / batches, 2) if batches else None,
        "mean_batch_crops": round(delta("lunakit_batch_size_crops_sum") / batches, 2) if batches else None,
        "server_exit_code_after_sigterm": exit_code,
    }


async def main_async(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="lunakit-load-") as tmp:
        workdir = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else seeded_bundle(workdir)
        load_before = os.getloadavg()
        on = await run_mode(bundle, args.max_batch, args, workdir)
        off = await run_mode(bundle, 1, args, workdir)
    ratio = on["requests_per_s"] / off["requests_per_s"] if off["requests_per_s"] else None
    import torch

    return {
        "benchmark": "load_serve",
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1m_before": round(load_before[0], 2),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        },
        "settings": {
            "clients": args.clients,
            "duration_s": args.duration,
            "max_wait_ms": args.max_wait_ms,
            "max_queue": args.max_queue,
            "device": args.device,
            "request": "1 crop, octet-stream",
            "bundle": args.bundle or "seeded fresh models",
        },
        "batching_on": on,
        "batching_off": off,
        "throughput_ratio_on_vs_off": round(ratio, 2) if ratio else None,
        "goals": {
            "zero_errors": on["errors"] == 0 and off["errors"] == 0,
            "mean_batch_above_8": (on["mean_batch_requests"] or 0) > 8,
            "throughput_at_least_4x": bool(ratio and ratio >= 4.0),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="model bundle (default: seeded fresh models)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per mode")
    parser.add_argument("--max-batch", type=int, default=64, help="max batch with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.clients < 1 or args.duration <= 0:
        raise SystemExit("--clients must be >= 1 and --duration > 0")
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
