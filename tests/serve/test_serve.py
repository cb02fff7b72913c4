"""`lunakit serve`: the batcher, the HTTP routes, upload safety, overload, disconnects, SIGTERM.

Three levels:
- the DynamicBatcher alone (asyncio, a fake model): routing, limits, cancellation, errors;
- the app in process (Starlette's TestClient, or raw ASGI calls with a gated model so that
  batching, 503 and client disconnects happen in a known order);
- a real `lunakit serve` subprocess on loopback: concurrency over sockets, 503 under load, and
  SIGTERM finishing an in-flight request with exit code 0.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import require

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from lunakit.bundle import export_bundle, load_bundle  # noqa: E402
from lunakit.errors import LunakitError  # noqa: E402
from lunakit.io import ct  # noqa: E402
from lunakit.io.findings import findings_document  # noqa: E402
from lunakit.io.luna import find_scans  # noqa: E402
from lunakit.models.checkpoint import load_checkpoint  # noqa: E402
from lunakit.pipeline.analyze import analyze  # noqa: E402
from lunakit.pipeline.options import AnalysisOptions
from lunakit.serve.app import ServeConfig, create_app  # noqa: E402
from lunakit.serve.batcher import BatcherClosed, BatcherConfig, DynamicBatcher, Overloaded  # noqa: E402
from lunakit.serve.metrics import MetricsRegistry  # noqa: E402
from lunakit.serve.payload import encode_crops  # noqa: E402

DICOM_DIR = Path("ct") / "C3N-00247-chest-ct"
BATCH_TOLERANCE = 1e-4  # CPU convolutions round differently with the batch size (seen: 6e-6)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def phantom_scan(phantom_root):
    return sorted(find_scans(phantom_root).values())[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, checkpoints, phantom_scan):
    """A bundle whose seg threshold leaves a few candidates on the phantom scan (pad crops, so
    scans thinner than a crop are analysed too)."""
    seg, _ = load_checkpoint(checkpoints["seg"])
    hu = torch.from_numpy(ct.load(phantom_scan).hu.astype(np.float32)).clamp(-1000, 1000)
    index = (torch.arange(hu.shape[0])[:, None] + torch.arange(-3, 4)[None]).clamp(0, hu.shape[0] - 1)
    with torch.no_grad():
        prob = torch.cat([seg(hu[index[s : s + 8]]) for s in range(0, hu.shape[0], 8)]).flatten()
    threshold = round(float(torch.quantile(prob, 0.98)), 4)
    options = AnalysisOptions(seg_threshold=threshold, crop_mode="pad", nodule_threshold=0.4)
    return export_bundle(tmp_path_factory.mktemp("serve_bundle") / "bundle", checkpoints, options)


@pytest.fixture(scope="module")
def reference(bundle):
    """The bundle's models, called directly: what every served answer is checked against."""
    models, options, _ = load_bundle(bundle)
    return models, options


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def client(bundle, upload_dir):
    config = ServeConfig(
        max_batch=16,
        max_wait_ms=2,
        max_queue=64,
        max_crops_per_request=8,
        max_zip_members=200,
        upload_dir=str(upload_dir),
    )
    with TestClient(create_app(bundle, config)) as test_client:
        yield test_client


def crops_of(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(-500.0, 400.0, size=(count, 32, 48, 48))).astype(np.float32)


def expected(reference, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    models, options = reference
    x = torch.from_numpy(crops)[:, None].clamp(options.hu_min, options.hu_max)
    with torch.no_grad():
        return models.cls(x)[1][:, 1].double().numpy(), models.mal(x)[1][:, 1].double().numpy()


def octets(client, crops: np.ndarray, shape: str | None = None):
    return client.post(
        "/v1/classify",
        content=crops.astype("<f4").tobytes(),
        headers={"Content-Type": "application/octet-stream", "X-Shape": shape or ",".join(str(s) for s in crops.shape)},
    )


# ------------------------------------------------------------------------------------ the batcher alone


def row_sums(batch: np.ndarray) -> tuple[np.ndarray, None]:
    """A fake model whose output identifies its input row, so misrouting shows."""
    return batch.reshape(len(batch), -1).sum(axis=1), None


def gated(function, calls: list, gate: threading.Event):
    def run(batch):
        calls.append(len(batch))
        assert gate.wait(20), "test gate never opened"
        return function(batch)

    return run


async def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_batcher_gathers_routes_and_refuses():
    async def scenario():
        calls, gate = [], threading.Event()
        metrics = MetricsRegistry()
        for name in ("lunakit_rejected_total", "lunakit_cancelled_total", "lunakit_crops_total"):
            metrics.counter(name, "test")
        metrics.gauge("lunakit_queue_depth", "test")
        for name in ("lunakit_batch_size_crops", "lunakit_batch_size_requests", "lunakit_batch_duration_seconds"):
            metrics.histogram(name, "test", (1, 2, 4, 8))
        batcher = DynamicBatcher(
            gated(row_sums, calls, gate), BatcherConfig(max_batch=8, max_wait_ms=1, max_queue=4), metrics
        )
        batcher.start()
        inputs = [np.full((n, 3), float(k), dtype=np.float32) for k, n in enumerate([1, 2, 3, 1, 4, 2])]
        first = asyncio.ensure_future(batcher.submit(inputs[0]))
        await wait_until(lambda: calls == [1])  # the first request runs alone, the model is held
        queued = [batcher.submit_nowait(x) for x in inputs[1:5]]  # 2 + 3 + 1 + 4 crops wait
        with pytest.raises(Overloaded):
            batcher.submit_nowait(inputs[5])  # queue of 4 is full: refused at once
        queued[1].cancel()  # its client left: it must be skipped, not run
        gate.set()
        results = [await first] + [await f for k, f in enumerate(queued) if k != 1]
        await batcher.close()
        with pytest.raises(BatcherClosed):
            batcher.submit_nowait(inputs[0])
        # request 0 alone; then 1, 3 and 4 together (2 + 1 + 4 = 7 crops <= 8), 2 skipped
        assert calls == [1, 7]
        for result, k in zip(results, [0, 1, 3, 4]):
            np.testing.assert_array_equal(result.outputs[0], np.full(len(inputs[k]), 3.0 * k))
            assert result.outputs[1] is None
        assert [r.batch_requests for r in results] == [1, 3, 3, 3]
        assert metrics.value("lunakit_rejected_total") == 1
        assert metrics.value("lunakit_cancelled_total") == 1
        assert metrics.value("lunakit_crops_total") == 8

    asyncio.run(scenario())


def test_batcher_respects_max_batch_and_survives_model_errors():
    async def scenario():
        calls = []

        def flaky(batch):
            calls.append(len(batch))
            if np.any(batch < 0):
                raise RuntimeError("model failed")
            return row_sums(batch)

        batcher = DynamicBatcher(flaky, BatcherConfig(max_batch=4, max_wait_ms=20, max_queue=100))
        batcher.start()
        good = [batcher.submit(np.full((1, 2), float(k), dtype=np.float32)) for k in range(10)]
        results = await asyncio.gather(*good)
        assert max(calls) <= 4 and sum(calls) == 10 and max(calls) > 1
        for k, result in enumerate(results):
            np.testing.assert_array_equal(result.outputs[0], [2.0 * k])
        big = await batcher.submit(np.ones((9, 2), dtype=np.float32))  # larger than max_batch: runs alone
        assert big.batch_crops == 9
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.submit(-np.ones((1, 2), dtype=np.float32))
        after = await batcher.submit(np.ones((1, 2), dtype=np.float32))  # the batcher still works
        np.testing.assert_array_equal(after.outputs[0], [2.0])
        await batcher.close()

    asyncio.run(scenario())


def test_batcher_config_is_checked():
    for bad in (dict(max_batch=0), dict(max_wait_ms=-1), dict(max_queue=0)):
        with pytest.raises(Exception, match="must be"):
            BatcherConfig(**bad)


# --------------------------------------------------------------------------------- classify in process


def test_health_ready_docs_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == ["cls", "mal", "seg"]
    spec = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/analyze", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/octet-stream"} <= set(body)
    assert client.get("/docs").status_code == 200
    text = client.get("/metrics").text
    assert "# TYPE lunakit_batch_size_crops histogram" in text
    assert "lunakit_ready 1" in text


def test_classify_json_and_octets_match_the_model(client, reference):
    crops = crops_of(3)
    crops[1, 0, 0, :5] = [-3000, 5000, 1e4, -1e4, 0]  # outside the HU window: clipped like the pipeline
    want_nodule, want_malignant = expected(reference, crops)
    by_json = client.post("/v1/classify", json=encode_crops(crops))
    by_octets = octets(client, crops)
    for response in (by_json, by_octets):
        assert response.status_code == 200, response.text
        answer = response.json()
        np.testing.assert_allclose(answer["p_nodule"], want_nodule, rtol=0, atol=BATCH_TOLERANCE)
        np.testing.assert_allclose(answer["p_malignant"], want_malignant, rtol=0, atol=BATCH_TOLERANCE)
        assert int(response.headers["X-Batch-Crops"]) >= 3
    assert 0.01 < min(want_nodule) and max(want_nodule) < 0.99  # graded: the comparison means something
    with_channel = octets(client, crops, shape="3,1,32,48,48")
    assert with_channel.json()["p_nodule"] == by_octets.json()["p_nodule"]


def test_classify_on_the_real_crop(client, reference, test_data):
    crop = torch.load(require(test_data / "crops" / "cls_val_example.pt"), weights_only=False)[0].numpy()
    response = octets(client, crop)  # shape (1, 32, 48, 48)
    assert response.status_code == 200
    want, _ = expected(reference, crop)
    np.testing.assert_allclose(response.json()["p_nodule"], want, atol=BATCH_TOLERANCE)


def classify_bad_requests():
    crop = crops_of(1)
    raw = crop.tobytes()
    b64 = base64.b64encode(raw).decode()
    nan = crop.copy()
    nan[0, 1, 2, 3] = np.nan
    json_type = {"Content-Type": "application/json"}
    octet = {"Content-Type": "application/octet-stream"}
    return {
        "wrong crop size": (json.dumps({"shape": [1, 16, 48, 48], "data": b64}), json_type, 400, "shape must be"),
        "wrong byte count": (json.dumps({"shape": [2, 32, 48, 48], "data": b64}), json_type, 400, "needs"),
        "float64 data": (
            json.dumps(
                {"shape": [1, 32, 48, 48], "data": base64.b64encode(crop.astype(np.float64).tobytes()).decode()}
            ),
            json_type,
            400,
            "needs",
        ),
        "not base64": (json.dumps({"shape": [1, 32, 48, 48], "data": "@@@@"}), json_type, 400, "base64"),
        "not json": ("{shape:", json_type, 400, "not valid JSON"),
        "missing data": (json.dumps({"shape": [1, 32, 48, 48]}), json_type, 400, '"shape" and "data"'),
        "shape not ints": (json.dumps({"shape": [1, 32.5, 48, 48], "data": b64}), json_type, 400, "integers"),
        "zero crops": (json.dumps({"shape": [0, 32, 48, 48], "data": ""}), json_type, 400, "at least 1"),
        "too many crops": (json.dumps({"shape": [9, 32, 48, 48], "data": b64}), json_type, 413, "limit"),
        "nan": (json.dumps(encode_crops(nan)), json_type, 400, "NaN"),
        "no X-Shape": (raw, octet, 400, "X-Shape"),
        "bad X-Shape": (raw, {**octet, "X-Shape": "one,32,48,48"}, 400, "X-Shape"),
        "short body": (raw[:-4], {**octet, "X-Shape": "1,32,48,48"}, 400, "needs"),
        "text": ("hello", {"Content-Type": "text/plain"}, 415, "not accepted"),
    }


@pytest.mark.parametrize("case", sorted(classify_bad_requests()))
def test_classify_refuses_bad_requests(client, case):
    body, headers, status, message = classify_bad_requests()[case]
    response = client.post("/v1/classify", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert response.json()["status"] == status


def test_server_keeps_serving_after_bad_requests(client, reference):
    for body, headers, _, _ in classify_bad_requests().values():
        client.post("/v1/classify", content=body, headers=headers)
    crops = crops_of(2, seed=5)
    response = octets(client, crops)
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["p_nodule"], expected(reference, crops)[0], atol=BATCH_TOLERANCE)
    assert client.get("/healthz").status_code == 200


# ---------------------------------------------- batching, overload and disconnects, in a known order


async def asgi_request(app, path: str, body: bytes, headers: dict[str, str]):
    """Call the ASGI app as a server would; returns (task, leave, messages). Set `leave` to make
    the client disconnect."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    leave, body_sent, messages = asyncio.Event(), [False], []

    async def receive():
        if not body_sent[0]:
            body_sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    return asyncio.ensure_future(app(scope, receive, send)), leave, messages


def response_of(messages) -> tuple[int, dict[str, str], bytes]:
    start = messages[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in messages[1:])


def test_batching_overload_and_disconnect_over_asgi(bundle, reference):
    app = create_app(bundle, ServeConfig(max_batch=64, max_wait_ms=1, max_queue=3))
    service = app.state.service
    calls, gate = [], threading.Event()
    service.batcher._run_batch = gated(service.batcher._run_batch, calls, gate)  # hold the model
    crops = crops_of(4, seed=9)
    headers = {"content-type": "application/octet-stream", "x-shape": "1,32,48,48"}

    async def scenario():
        async with app.router.lifespan_context(app):
            first, _, first_messages = await asgi_request(app, "/v1/classify", crops[0].tobytes(), headers)
            await wait_until(lambda: calls == [1])  # request 0 is in the model, held there
            leaving, leave, leaving_messages = await asgi_request(app, "/v1/classify", crops[1].tobytes(), headers)
            waiting = [await asgi_request(app, "/v1/classify", crops[k].tobytes(), headers) for k in (2, 3)]
            await wait_until(lambda: service.batcher.queue_depth == 3)
            refused, _, refused_messages = await asgi_request(app, "/v1/classify", crops[0].tobytes(), headers)
            await asyncio.wait_for(refused, 10)  # answered at once, model still held
            status, refused_headers, body = response_of(refused_messages)
            assert status == 503 and refused_headers["retry-after"] == "1" and b"queue full" in body
            leave.set()  # request 1's client disconnects while queued
            await asyncio.wait_for(leaving, 10)
            assert response_of(leaving_messages)[0] == 499
            gate.set()
            await asyncio.wait_for(asyncio.gather(first, *(task for task, _, _ in waiting)), 60)
            want = expected(reference, crops)[0]
            assert response_of(first_messages)[0] == 200
            assert json.loads(response_of(first_messages)[2])["p_nodule"] == pytest.approx(
                [want[0]], abs=BATCH_TOLERANCE
            )
            for k, (_, _, messages) in zip((2, 3), waiting):
                status, answer_headers, body = response_of(messages)
                assert status == 200
                assert answer_headers["x-batch-requests"] == "2"  # 2 and 3 shared one model call
                assert json.loads(body)["p_nodule"] == pytest.approx([want[k]], abs=BATCH_TOLERANCE)
        assert calls == [1, 2]  # the disconnected request never reached the model
        metrics = app.state.metrics
        assert metrics.value("lunakit_cancelled_total") == 1
        assert metrics.value("lunakit_rejected_total") == 1

    asyncio.run(scenario())


def test_model_failure_is_a_json_500_and_the_server_goes_on(bundle):
    app = create_app(bundle, ServeConfig(max_wait_ms=1))
    original = app.state.service.batcher._run_batch
    failing = [True]

    def sometimes_failing(batch):
        if failing[0]:
            raise RuntimeError("out of memory (simulated)")
        return original(batch)

    app.state.service.batcher._run_batch = sometimes_failing
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = octets(test_client, crops_of(1))
        assert response.status_code == 500
        assert "out of memory (simulated)" in response.json()["error"]
        failing[0] = False
        assert octets(test_client, crops_of(1)).status_code == 200


def test_serve_cli_refuses_bad_bundles_and_settings(tmp_path, bundle, capsys):
    from lunakit.cli import main

    assert main(["serve", "--bundle", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(bundle), "--max-batch", "0"]) == 2
    assert "max_batch must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ analyze in process


def mhd_files(scan_path: Path) -> dict:
    raw = scan_path.with_suffix(".raw")
    return [
        ("files", (scan_path.name, scan_path.read_bytes(), "text/plain")),
        ("files", (raw.name, raw.read_bytes(), "application/octet-stream")),
    ]


def assert_same_findings(served: list[dict], direct: list[dict]) -> None:
    assert [sorted(f) for f in served] == [sorted(f) for f in direct]
    for a, b in zip(served, direct):
        for key in a:
            if a[key] is None or b[key] is None:
                assert a[key] is None and b[key] is None, key
            else:
                np.testing.assert_allclose(
                    np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float), rtol=0, atol=1e-9, err_msg=key
                )


def test_analyze_mhd_upload_matches_direct_analysis(client, reference, phantom_scan, upload_dir):
    response = client.post("/v1/analyze", files=mhd_files(phantom_scan))
    assert response.status_code == 200, response.text
    served = response.json()
    models, options = reference
    scan = ct.load(phantom_scan)
    direct = findings_document(scan, analyze(scan, models, options), options, models.checksums)
    assert served["source"] == phantom_scan.name
    assert served["series_uid"] == direct["series_uid"] and served["size_irc"] == direct["size_irc"]
    assert served["model_sha256"] == direct["model_sha256"]
    assert len(direct["findings"]) > 0
    assert_same_findings(served["findings"], direct["findings"])
    assert list(upload_dir.iterdir()) == []  # temporary upload folders are removed


def dicom_zip(test_data: Path, count: int = 4, extra: dict[str, bytes] | None = None) -> bytes:
    import SimpleITK as sitk

    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(require(test_data / DICOM_DIR)))[:count]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            zf.write(name, f"series/{Path(name).name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_analyze_dicom_zip(client, reference, test_data, tmp_path):
    response = client.post("/v1/analyze", content=dicom_zip(test_data, 2), headers={"Content-Type": "application/zip"})
    assert response.status_code == 200, response.text
    served = response.json()
    import SimpleITK as sitk

    folder = tmp_path / "two"
    folder.mkdir()
    for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(test_data / DICOM_DIR))[:2]:
        shutil.copy(name, folder)
    scan = ct.load(folder)
    models, options = reference
    direct = findings_document(scan, analyze(scan, models, options), options, models.checksums)
    assert served["series_uid"] == "1.3.6.1.4.1.14519.5.2.1.7085.2626.242193282649561899185427104083"
    assert served["size_irc"] == [2, 512, 512]
    assert json.dumps(served["geometry"]) == json.dumps(direct["geometry"])
    assert_same_findings(served["findings"], direct["findings"])


def zip_of(entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for entry, data in entries:
            zf.writestr(entry, data)
    return buffer.getvalue()


def fake_dicom() -> bytes:
    return b"\x00" * 128 + b"DICM" + b"\x00" * 64  # the preamble, then nothing readable


def corrupt_crc() -> bytes:
    data = bytearray(zip_of([("a.dcm", fake_dicom())]))
    offset = data.index(b"DICM")
    data[offset] ^= 0xFF  # stored member: flipping a byte breaks its CRC
    return bytes(data)


def symlink_zip() -> bytes:
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = 0o120777 << 16
    return zip_of([(info, "/etc/passwd")])


def analyze_bad_uploads(test_data: Path):
    zip_type = {"Content-Type": "application/zip"}
    return {
        "corrupt zip": (b"PK\x03\x04 this is not a zip", zip_type, 400, "not a valid zip"),
        "traversal": (zip_of([("../../evil.dcm", fake_dicom())]), zip_type, 400, "parent-folder"),
        "absolute": (zip_of([("/etc/evil.dcm", fake_dicom())]), zip_type, 400, "absolute path"),
        "backslash traversal": (zip_of([("..\\evil.dcm", fake_dicom())]), zip_type, 400, "parent-folder"),
        "symlink": (symlink_zip(), zip_type, 400, "symbolic link"),
        "bad crc": (corrupt_crc(), zip_type, 400, "corrupt"),
        "empty zip": (zip_of([]), zip_type, 400, "holds no files"),
        "non-DICOM member": (dicom_zip(test_data, 2, {"notes.txt": b"hello"}), zip_type, 415, "not a DICOM file"),
        "unreadable DICOM": (zip_of([("a.dcm", fake_dicom()), ("b.dcm", fake_dicom())]), zip_type, 422, "upload.zip"),
        "too thin": (dicom_zip(test_data, 1), zip_type, 422, "slice"),
        "empty body": (b"", zip_type, 400, "empty body"),
        "text": (b"hello", {"Content-Type": "text/plain"}, 415, "not accepted"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "corrupt zip",
        "traversal",
        "absolute",
        "backslash traversal",
        "symlink",
        "bad crc",
        "empty zip",
        "non-DICOM member",
        "unreadable DICOM",
        "too thin",
        "empty body",
        "text",
    ],
)
def test_analyze_refuses_bad_uploads(client, test_data, upload_dir, case):
    body, headers, status, message = analyze_bad_uploads(test_data)[case]
    response = client.post("/v1/analyze", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "lunakit-upload-" not in response.json()["error"]  # no server paths in messages
    assert list(upload_dir.iterdir()) == []
    assert not (upload_dir.parent / "evil.dcm").exists()


def test_analyze_refuses_bad_multipart(client, phantom_scan, test_data):
    header = phantom_scan.read_bytes()
    evil_header = header.replace(
        b"ElementDataFile = " + phantom_scan.with_suffix(".raw").name.encode(), b"ElementDataFile = ../secret.raw"
    )
    cases = [
        ([("files", (phantom_scan.name, header, "text/plain"))], 400, "was not uploaded"),
        (
            [("files", ("scan.mhd", evil_header, "text/plain")), ("files", ("secret.raw", b"x", "x/y"))],
            400,
            "bare file name",
        ),
        (
            [("files", ("a.zip", zip_of([]), "application/zip")), ("files", ("b.zip", zip_of([]), "application/zip"))],
            400,
            "not both",
        ),
        ([("files", ("../up.mhd", header, "text/plain"))], 400, "bare file name"),
        ([("files", ("thin.zip", dicom_zip(test_data, 1), "application/zip"))], 422, "thin.zip"),
    ]
    for files, status, message in cases:
        response = client.post("/v1/analyze", files=files)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
    no_files = client.post("/v1/analyze", data={"note": "hi"}, files=[("x", ("", b"", "text/plain"))])
    assert no_files.status_code == 400


def test_upload_limits(bundle, phantom_scan, tmp_path):
    config = ServeConfig(max_upload_bytes=4096, max_zip_members=3, upload_dir=str(tmp_path))
    with TestClient(create_app(bundle, config)) as small:
        declared = small.post("/v1/analyze", files=mhd_files(phantom_scan))
        assert declared.status_code == 413 and "over the limit" in declared.json()["error"]

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(10):
                yield b"\x00" * 1000

        streamed = small.post("/v1/analyze", content=chunks(), headers={"Content-Type": "application/zip"})
        assert streamed.status_code == 413 and "over the limit" in streamed.json()["error"]
        members = small.post(
            "/v1/analyze",
            content=zip_of([(f"{k}.dcm", b"") for k in range(4)]),
            headers={"Content-Type": "application/zip"},
        )
        assert members.status_code == 413 and "members" in members.json()["error"]
        assert small.get("/healthz").status_code == 200
    with TestClient(create_app(bundle, ServeConfig(max_uncompressed_bytes=1000, upload_dir=str(tmp_path)))) as tight:
        bomb = zip_of([("big.dcm", b"\x00" * 100_000)])  # deflates to a few hundred bytes
        response = tight.post("/v1/analyze", content=bomb, headers={"Content-Type": "application/zip"})
        assert response.status_code == 413 and "unpacks to" in response.json()["error"]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- a real server process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m lunakit.cli serve ...` on a free loopback port, log in a file."""

    def __init__(self, bundle: Path, log: Path, *extra: str) -> None:
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
            "--port",
            str(self.port),
            "--no-access-log",
            *extra,
        ]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}: {self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not ready in {timeout} s: {self.log_path.read_text()}")

    def metric(self, name: str) -> float:
        import httpx

        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    process = ServerProcess(
        bundle,
        tmp_path_factory.mktemp("server") / "server.log",
        "--max-batch",
        "8",
        "--max-wait-ms",
        "50",
        "--max-queue",
        "4",
        "--max-crops",
        "64",
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def post_crops(url: str, crops: np.ndarray, timeout: float = 120.0):
    import httpx

    return httpx.post(
        url + "/v1/classify",
        content=crops.astype("<f4").tobytes(),
        timeout=timeout,
        headers={"Content-Type": "application/octet-stream", "X-Shape": ",".join(str(s) for s in crops.shape)},
    )


def test_concurrent_clients_share_batches(server, reference):
    crops = crops_of(8, seed=21)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda k: post_crops(server.url, crops[k : k + 1]), range(8)))
    assert {r.status_code for r in responses} <= {200, 503}
    answered = [(k, r) for k, r in enumerate(responses) if r.status_code == 200]
    assert max(int(r.headers["X-Batch-Requests"]) for _, r in answered) > 1  # a batch of several requests
    want = expected(reference, crops)[0]
    for k, r in answered:
        assert r.json()["p_nodule"] == pytest.approx([want[k]], abs=BATCH_TOLERANCE)


def test_overload_answers_503_at_once(server):
    crops = crops_of(8, seed=3)  # 8 crops = max_batch: every request is a model call of its own
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda k: post_crops(server.url, crops, timeout=120), range(16)))
    statuses = [r.status_code for r in responses]  # a hung request would raise a timeout instead
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["Retry-After"] == "1" and "queue full" in refused.json()["error"]
    assert server.metric("lunakit_rejected_total") >= statuses.count(503)
    assert post_crops(server.url, crops[:1]).status_code == 200  # and it keeps serving


def test_sigterm_finishes_in_flight_request_and_exits_0(bundle, tmp_path, reference):
    process = ServerProcess(bundle, tmp_path / "server.log", "--max-batch", "8", "--max-crops", "64")
    try:
        process.wait_ready()
        crops = crops_of(24, seed=4)
        for attempt in range(5):
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(post_crops, process.url, crops)
                while not pending.done() and process.metric("lunakit_requests_in_flight") < 2:
                    time.sleep(0.01)  # 2 = this /metrics request + the classification
                if pending.done():
                    continue  # finished before we saw it in flight: try again
                os.kill(process.process.pid, signal.SIGTERM)
                response = pending.result(timeout=300)
            break
        else:
            pytest.fail("could not catch a request in flight")
        assert response.status_code == 200
        assert response.json()["p_nodule"] == pytest.approx(list(expected(reference, crops)[0]), abs=BATCH_TOLERANCE)
        assert process.process.wait(120) == 0
        assert "Finished server process" in process.log_path.read_text()
    finally:
        process.stop()


def test_fast_mode_serves_fp32_scores_near_and_above_the_threshold(bundle, reference, upload_dir):
    """precision bf16: every crop whose bf16 p_nodule lies above nodule_threshold - 0.4 is scored
    again in fp32 (this bundle's threshold is 0.4: all of them), so the answers are fp32's."""
    crops = crops_of(5, seed=3)
    want_nodule, want_malignant = expected(reference, crops)
    config = ServeConfig(max_wait_ms=1, precision="bf16", upload_dir=str(upload_dir))
    with TestClient(create_app(bundle, config)) as fast:
        answer = octets(fast, crops).json()
    np.testing.assert_allclose(answer["p_nodule"], want_nodule, rtol=0, atol=BATCH_TOLERANCE)
    np.testing.assert_allclose(answer["p_malignant"], want_malignant, rtol=0, atol=BATCH_TOLERANCE)
    with pytest.raises(LunakitError, match=r"^--precision fp16: must be 'fp32', 'bf16' or 'auto'$"):
        ServeConfig(precision="fp16")
