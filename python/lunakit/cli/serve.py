"""`lunakit serve --bundle B`: the bundle over HTTP, with dynamic request batching (docs/serving.md)."""

from __future__ import annotations

import argparse

from lunakit.cli.models import add_precision_argument


def _run(args: argparse.Namespace) -> int:
    from lunakit.serve import serve
    from lunakit.serve.app import ServeConfig

    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_crops_per_request=args.max_crops,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        max_analyses=args.max_analyses,
        device=args.device,
        precision=args.precision,
        engine=args.engine,
        upload_dir=args.upload_dir,
    )
    graceful = None if args.graceful_timeout <= 0 else args.graceful_timeout
    return serve(
        args.bundle,
        args.host,
        args.port,
        config,
        access_log=args.access_log,
        graceful_timeout_s=graceful,
        log_level=args.log_level,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a model bundle over HTTP (classify crops, analyze scans)")
    p.add_argument("--bundle", required=True, help="model bundle folder (lunakit export)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=64, help="crops per model call (default 64; 1 = no batching)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its batch (default 5)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests waiting for the model; more get 503 + Retry-After (default 256)",
    )
    p.add_argument("--max-crops", type=int, default=256, help="crops per /v1/classify request (default 256)")
    p.add_argument("--max-upload-mb", type=float, default=2048, help="largest /v1/analyze body in MiB (default 2048)")
    p.add_argument(
        "--max-analyses", type=int, default=2, help="whole-scan analyses running or waiting; more get 503 (default 2)"
    )
    p.add_argument("--upload-dir", default=None, help="folder for temporary upload files (default: system temp)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    add_precision_argument(p)
    p.add_argument(
        "--engine",
        choices=("python", "cpp"),
        default="python",
        help="who analyzes whole scans (/v1/analyze): the Python pipeline (default) or the C++ runtime in-process",
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=60.0,
        help="seconds in-flight requests get to finish after SIGTERM (0: no limit; default 60)",
    )
    p.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True, help="log every request (default on)"
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_run)
