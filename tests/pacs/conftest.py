"""A real PACS for the tests: Orthanc with its DICOMweb plugin, started on a free loopback port
with its own configuration and storage in a temporary folder (never the system service), and
stopped when the module's tests are done. Skips only when Orthanc is not installed
(scripts/setup.sh installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from pacs_helpers import free_port

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    root: str  # REST root, http://127.0.0.1:PORT

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.root}{path}", timeout=30) as answer:
            body = answer.read()
        return json.loads(body) if answer.headers.get_content_type() == "application/json" else body

    def post_instance(self, data: bytes) -> dict:
        request = urllib.request.Request(f"{self.root}/instances", data=data, method="POST")
        request.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if binary is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc and its DICOMweb plugin are not installed (scripts/setup.sh: orthanc orthanc-dicomweb)")
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "lunakit-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
