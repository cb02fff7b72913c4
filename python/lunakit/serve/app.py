"""The HTTP service: `create_app(bundle, config)` -> a FastAPI (ASGI) application.

Routes (docs/serving.md has the details and curl examples):
  POST /v1/classify   crops in HU -> p_nodule (and p_malignant), through the dynamic batcher
  POST /v1/analyze    a whole scan (zip of a DICOM series, or .mhd + data file) -> findings JSON
                      (engine "python": pipeline.analyze; "cpp": the C++ runtime in-process)
  GET  /healthz       the process answers
  GET  /readyz        models loaded and taking requests (503 while shutting down)
  GET  /metrics       Prometheus text
  GET  /docs, /openapi.json

Every refusal is a JSON object {"error": "<one line>", "status": <code>}. Model work never runs
on the event loop: classification in the batcher's worker thread, whole-scan analysis in its own
worker thread, so health checks and request parsing go on while a model runs.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime.

import asyncio
import concurrent.futures
import functools
import os
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

import lunakit
from lunakit.errors import LunakitError, first_line
from lunakit.pipeline import precision
from lunakit.pipeline.options import AnalysisOptions, Models
from lunakit.serve.batcher import BatcherClosed, BatcherConfig, BatchResult, DynamicBatcher, Overloaded
from lunakit.serve.metrics import MetricsRegistry, server_metrics
from lunakit.serve.payload import RequestError, crops_from_json, crops_from_octets
from lunakit.serve.uploads import UploadedFile, UploadError, UploadLimits, extract_dicom_zip, place_metaimage

ROUTES = ("/v1/classify", "/v1/analyze", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")
JSON_SLACK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Everything `lunakit serve` can be told, besides the bundle."""

    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_crops_per_request: int = 256
    max_upload_bytes: int = 2 << 30  # one /v1/analyze body (2 GiB)
    max_uncompressed_bytes: int = 4 << 30  # what one uploaded zip may unpack to
    max_zip_members: int = 5000
    max_analyses: int = 2  # whole-scan analyses running or waiting; one more gets 503
    device: str = "cpu"
    precision: Optional[str] = None  # "fp32", "bf16" or "auto"; None: the bundle's (docs/pipeline.md, "Fast mode")
    engine: str = "python"  # who analyzes whole scans: "python" or "cpp" (classification stays Python)
    upload_dir: Optional[str] = None  # temporary folders for uploads (default: the system's)

    def __post_init__(self) -> None:
        BatcherConfig(self.max_batch, self.max_wait_ms, self.max_queue)  # same checks
        if self.precision is not None:
            precision.check(self.precision, "--precision")
        if self.engine not in ("python", "cpp"):
            raise LunakitError(f"serve: engine must be 'python' or 'cpp', got {self.engine!r}")
        for name in (
            "max_crops_per_request",
            "max_upload_bytes",
            "max_uncompressed_bytes",
            "max_zip_members",
            "max_analyses",
        ):
            if getattr(self, name) < 1:
                raise LunakitError(f"serve: {name} must be >= 1, got {getattr(self, name)}")

    @property
    def batcher(self) -> BatcherConfig:
        return BatcherConfig(self.max_batch, self.max_wait_ms, self.max_queue)


class BodyTooLarge(LunakitError):
    """A request body went past its route's limit while it was being read."""


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


def _error_response(status: int, message: str, headers: Optional[dict[str, str]] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class BodyLimitMiddleware:
    """413 for a body over its route's limit: at once from Content-Length, else while streaming."""

    def __init__(self, app: Any, limits: dict[str, int]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    response = _error_response(413, f"request body of {declared} bytes is over the limit of {limit}")
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Counts requests by route and status, their durations, and how many are in flight."""

    def __init__(self, app: Any, metrics: MetricsRegistry) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope.get("path", "")
        route = route if route in ROUTES else "other"
        status = 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        self.metrics.inc("lunakit_requests_in_flight", 1)
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.inc("lunakit_requests_in_flight", -1)
            self.metrics.inc("lunakit_requests_total", labels={"route": route, "code": str(status)})
            self.metrics.observe(
                "lunakit_request_duration_seconds", time.perf_counter() - started, labels={"route": route}
            )


class ModelService:
    """The loaded bundle and the work done with it: batched classification, whole-scan analysis."""

    def __init__(
        self,
        models: Models,
        options: AnalysisOptions,
        manifest: dict[str, Any],
        device: torch.device,
        config: ServeConfig,
        metrics: MetricsRegistry,
        cpp: Optional[Any] = None,
    ) -> None:
        self.models = models
        self.cpp = cpp  # a pipeline.cpp_engine.CppAnalyzer with engine "cpp"
        self.options = options
        self.manifest = manifest
        self.device = device
        self.config = config
        self.metrics = metrics
        self.batcher = DynamicBatcher(self.classify_arrays, config.batcher, metrics)
        self.analysis_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lunakit-analyze")
        self.analyses = 0
        self.ready = False

    # -- classification (runs in the batcher's worker thread) --

    def classify_arrays(self, crops: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """p_nodule [B] and p_malignant [B] (NaN where not computed) or None, for crops [B, 1, I, R, C]:
        the pipeline's own classification step (pipeline.analyze.classify_crops), in model batches."""
        from lunakit.pipeline.analyze import classify_crops

        options = self.options
        count = len(crops)
        p_nodule = np.empty(count, dtype=np.float64)
        p_malignant = None if self.models.mal is None else np.full(count, np.nan, dtype=np.float64)
        chunk = max(self.config.max_batch, 1)
        with torch.inference_mode():
            for start in range(0, count, chunk):
                stop = min(start + chunk, count)
                x = torch.from_numpy(crops[start:stop]).to(self.device)  # (B, 1, 32, 48, 48)
                nodule, malignant = classify_crops(x.clamp_(options.hu_min, options.hu_max), self.models, options)
                p_nodule[start:stop] = nodule.cpu().numpy()
                if p_malignant is not None:
                    p_malignant[start:stop] = malignant.cpu().numpy()
        return p_nodule, p_malignant

    # -- whole-scan analysis (runs in the analysis worker thread) --

    def analyze_folder(self, scan_source: Path, series_uid: Optional[str], label: str, workdir: Path) -> dict:
        """Load the scan at `scan_source` and return its findings document; errors name `label`."""
        from lunakit.io import ct
        from lunakit.io.findings import findings_document
        from lunakit.pipeline.analyze import analyze

        try:
            scan = ct.load(scan_source, series_uid=series_uid)
            if self.cpp is not None:
                findings = self.cpp.analyze(scan)
            else:
                findings = analyze(scan, self.models, self.options, device=self.device)
        except LunakitError as exc:
            message = str(exc).replace(str(scan_source), label).replace(str(workdir), label)
            raise UploadError(message, status=422) from None
        document = findings_document(scan, findings, self.options, self.models.checksums)
        document["source"] = label
        return document

    def analyze_zip(self, archive: Path, series_uid: Optional[str], label: str, workdir: Path) -> dict:
        limits = UploadLimits(self.config.max_zip_members, self.config.max_uncompressed_bytes)
        series = workdir / "series"
        extract_dicom_zip(archive, series, limits, label)
        return self.analyze_folder(series, series_uid, label, workdir)

    def analyze_parts(self, parts: list[UploadedFile], series_uid: Optional[str], workdir: Path) -> dict:
        zips = [p for p in parts if p.filename.lower().endswith(".zip")]
        if zips:
            if len(parts) != 1:
                raise UploadError("send one zip archive, or a .mhd header with its data file, not both")
            return self.analyze_zip(zips[0].path, series_uid, zips[0].filename, workdir)
        header = place_metaimage(parts, workdir / "scan")
        return self.analyze_folder(header, series_uid, header.name, workdir)


async def _result_unless_disconnected(request: Any, future: asyncio.Future) -> BatchResult:
    """The batcher's result; if the client disconnects first, withdraw the request."""

    async def wait_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        future.cancel()
        raise
    finally:
        if not watcher.done():
            watcher.cancel()
    if not future.done():
        future.cancel()
        raise ClientDisconnected()
    return future.result()


def _as_json_floats(values: Optional[np.ndarray]) -> Optional[list[Optional[float]]]:
    if values is None:
        return None
    return [None if np.isnan(v) else float(v) for v in values]


CLASSIFY_OPENAPI = {
    "parameters": [
        {
            "name": "X-Shape",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "with application/octet-stream: the array shape, e.g. 1,32,48,48",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["shape", "data"],
                    "properties": {
                        "shape": {"type": "array", "items": {"type": "integer"}, "example": [1, 32, 48, 48]},
                        "data": {
                            "type": "string",
                            "format": "byte",
                            "description": "base64 of little-endian float32 HU values, [I, R, C] order",
                        },
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}

ANALYZE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/zip": {
                "schema": {"type": "string", "format": "binary"},
                "description": "a zip archive of one DICOM series",
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one .zip of a DICOM series, or a .mhd and its .raw",
                        }
                    },
                }
            },
        },
    },
}


def _load_service(bundle: str | os.PathLike, config: ServeConfig) -> ModelService:
    """The bundle's models on the configured device (and the C++ analyzer with engine "cpp"),
    loaded and checked before the server takes a request."""
    from lunakit.bundle import load_bundle
    from lunakit.pipeline.loading import resolve_device

    device = resolve_device(config.device)
    models, options, manifest = load_bundle(bundle, device=device)
    options = precision.with_precision(options, config.precision, device, compiled=models.compiled)
    if manifest.get("quantization") and device.type != "cpu":
        raise LunakitError(f"{bundle}: an int8-quantized bundle runs on the CPU only, not {device}")
    cpp = None
    if config.engine == "cpp":
        from lunakit.pipeline.cpp_engine import CppAnalyzer

        # Loaded and checked by the C++ runtime as well; same bundle, so the same options and checksums.
        cpp = CppAnalyzer(bundle, device=config.device, precision=options.precision)
    return ModelService(models, options, manifest, device, config, server_metrics(), cpp=cpp)


def _add_error_handlers(app: Any) -> None:
    """Every error the service raises, and FastAPI's own, as one JSON line {"error", "status"}."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return _error_response(exc.status, str(exc))

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return _error_response(exc.status, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return _error_response(413, str(exc))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return _error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(BatcherClosed)
    async def _closed(request: Request, exc: BatcherClosed):
        return _error_response(503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        # Starlette logs the traceback after this answer; the client gets one JSON line.
        name, line = type(exc).__name__, first_line(exc)
        return _error_response(500, f"internal error: {name}" + ("" if line == name else f": {line}"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error_response(400, f"{where}: {first.get('msg', 'invalid request')}")


def create_app(bundle: str | os.PathLike, config: ServeConfig = ServeConfig()) -> Any:
    """The ASGI application serving `bundle`; models are loaded (and checked) here, before serving."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse, Response
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import UploadFile
    except ModuleNotFoundError as exc:
        raise LunakitError(
            f"lunakit serve needs FastAPI and uvicorn: pip install fastapi uvicorn python-multipart "
            f"(missing {exc.name})"
        ) from None
    from pydantic import BaseModel

    service = _load_service(bundle, config)
    metrics, manifest, options = service.metrics, service.manifest, service.options

    @asynccontextmanager
    async def lifespan(app: Any):
        service.batcher.start()
        service.ready = True
        metrics.set("lunakit_ready", 1)
        try:
            yield
        finally:
            # uvicorn calls this after in-flight requests have finished (graceful shutdown)
            service.ready = False
            metrics.set("lunakit_ready", 0)
            await service.batcher.close()
            await run_in_threadpool(service.analysis_executor.shutdown, True)

    class ClassifyResponse(BaseModel):
        p_nodule: list[float]
        p_malignant: Optional[list[Optional[float]]]

    class ErrorResponse(BaseModel):
        error: str
        status: int

    errors = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}
    app = FastAPI(
        title="lunakit",
        version=lunakit.__version__,
        lifespan=lifespan,
        description="Lung-nodule CT analysis over HTTP. Not for clinical use.",
    )
    app.state.service = service
    app.state.metrics = metrics

    _add_error_handlers(app)

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Models loaded and taking requests", responses={503: {"model": ErrorResponse}})
    async def readyz():
        if not service.ready or not service.batcher.running:
            return _error_response(503, "not ready (starting or shutting down)")
        return {
            "status": "ready",
            "device": str(service.device),
            "engine": config.engine,
            "models": sorted(service.models.checksums),
            "model_sha256": service.models.checksums,
            "crop_size": list(service.options.crop_size),
            "quantization": manifest.get("quantization"),
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics_text():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(
        "/v1/classify",
        summary="Nodule (and malignancy) probability of HU crops",
        response_model=ClassifyResponse,
        responses=errors,
        openapi_extra=CLASSIFY_OPENAPI,
    )
    async def classify(request: Request):
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        crop_size, limit = service.options.crop_size, config.max_crops_per_request
        if content_type == "application/octet-stream":
            crops = crops_from_octets(body, request.headers.get("x-shape"), crop_size, limit)
        elif content_type in ("application/json", ""):
            crops = crops_from_json(body, crop_size, limit)
        else:
            raise RequestError(
                f"Content-Type {content_type!r} is not accepted: send application/json or application/octet-stream",
                status=415,
            )
        future = service.batcher.submit_nowait(crops)
        try:
            result = await _result_unless_disconnected(request, future)
        except ClientDisconnected:
            return Response(status_code=499)  # nobody reads it; counted in the metrics
        p_nodule, p_malignant = result.outputs
        return JSONResponse(
            {"p_nodule": _as_json_floats(p_nodule), "p_malignant": _as_json_floats(p_malignant)},
            headers={"X-Batch-Crops": str(result.batch_crops), "X-Batch-Requests": str(result.batch_requests)},
        )

    @app.post(
        "/v1/analyze",
        summary="Findings of a whole scan (zip of a DICOM series, or .mhd + .raw)",
        responses=errors,
        openapi_extra=ANALYZE_OPENAPI,
    )
    async def analyze_scan(request: Request, series_uid: Optional[str] = None):
        if not service.ready:
            raise BatcherClosed("the server is shutting down")
        if service.analyses >= config.max_analyses:
            raise Overloaded(f"{service.analyses} analyses running or waiting; retry later", retry_after_s=10)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ZIP_TYPES and content_type != "multipart/form-data":
            raise RequestError(
                f"Content-Type {content_type or 'none'!r} is not accepted: send application/zip "
                "(a DICOM series) or multipart/form-data (a .zip, or a .mhd and its data file)",
                status=415,
            )
        service.analyses += 1
        metrics.set("lunakit_analyses_in_progress", service.analyses)
        workdir = Path(tempfile.mkdtemp(prefix="lunakit-upload-", dir=config.upload_dir))
        loop = asyncio.get_running_loop()
        try:
            if content_type in ZIP_TYPES:
                archive = workdir / "upload.zip"
                size = 0
                with open(archive, "wb") as handle:
                    async for chunk in request.stream():
                        size += len(chunk)
                        handle.write(chunk)
                if size == 0:
                    raise RequestError("empty body: send the zip archive of a DICOM series")
                job = functools.partial(service.analyze_zip, archive, series_uid, "upload.zip", workdir)
            else:
                form = await request.form(max_files=64, max_fields=64)
                parts = []
                for number, (_, value) in enumerate(form.multi_items()):
                    if not isinstance(value, UploadFile):
                        continue
                    target = workdir / f"part{number}"
                    await run_in_threadpool(_save_upload, value, target)
                    parts.append(UploadedFile(value.filename or "", target))
                await form.close()
                if not parts:
                    raise RequestError("multipart body holds no files: send a .zip, or a .mhd and its data file")
                job = functools.partial(service.analyze_parts, parts, series_uid, workdir)
            document = await loop.run_in_executor(service.analysis_executor, job)
            return JSONResponse(document)
        finally:
            service.analyses -= 1
            metrics.set("lunakit_analyses_in_progress", service.analyses)
            await run_in_threadpool(shutil.rmtree, workdir, True)

    limits = {
        "/v1/analyze": config.max_upload_bytes,
        "/v1/classify": config.max_crops_per_request * int(np.prod(options.crop_size)) * 4 * 4 // 3 + JSON_SLACK_BYTES,
    }
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _save_upload(upload: Any, target: Path) -> None:
    upload.file.seek(0)
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
