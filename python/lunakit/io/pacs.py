"""A PACS over DICOMweb (dicomweb-client): find a study's CT series, fetch it (WADO-RS), store
results back (STOW-RS). docs/pacs.md has the commands; `lunakit pacs analyze` drives it.

Every failure of the PACS (down, 4xx, 5xx, an unknown study, a study without a CT series) is a
PacsError with one line naming the URL and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TypeVar

from lunakit.errors import LunakitError, first_line

T = TypeVar("T")

_SERIES_UID = "0020000E"
_MODALITY = "00080060"
_STUDY_UID = "0020000D"


class PacsError(LunakitError):
    """The PACS could not be reached, refused a request, or does not hold what was asked for."""


class Pacs:
    """One DICOMweb service root, e.g. http://host:8042/dicom-web for Orthanc."""

    def __init__(self, url: str) -> None:
        from dicomweb_client.api import DICOMwebClient

        if not url.startswith(("http://", "https://")):
            raise PacsError(f"{url}: a PACS URL must start with http:// or https://")
        self.url = url.rstrip("/")
        self._client = DICOMwebClient(url=self.url)

    def _call(self, what: str, request: Callable[[], T]) -> T:
        import requests

        try:
            return request()
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            reason = exc.response.reason if exc.response is not None else first_line(exc)
            raise PacsError(f"PACS {self.url}: {what} failed: HTTP {status} {reason}") from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"PACS {self.url}: {what} failed: cannot reach it ({type(exc).__name__})") from None
        except ValueError as exc:  # an answer that is not DICOM JSON / multipart
            raise PacsError(f"PACS {self.url}: {what} failed: unreadable answer ({first_line(exc)})") from None

    def ct_series(self, study_uid: str, series_uid: Optional[str] = None) -> str:
        """The UID of the study's CT series (`series_uid` picks one when there are several)."""
        studies = self._call(
            "study search", lambda: self._client.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
        )
        if not any(_value(s, _STUDY_UID) == study_uid for s in studies):
            raise PacsError(f"PACS {self.url}: no study {study_uid}")
        series = self._call("series search", lambda: self._client.search_for_series(study_instance_uid=study_uid))
        if not series:
            raise PacsError(f"PACS {self.url}: study {study_uid} has no series")
        modality = {_value(s, _SERIES_UID): _value(s, _MODALITY) for s in series}
        ct = sorted(uid for uid, m in modality.items() if m == "CT")
        if series_uid is not None:
            if series_uid not in modality:
                raise PacsError(f"PACS {self.url}: study {study_uid} has no series {series_uid}")
            if modality[series_uid] != "CT":
                raise PacsError(
                    f"PACS {self.url}: series {series_uid} is {modality[series_uid] or 'no modality'}, not CT"
                )
            return series_uid
        if not ct:
            found = ", ".join(sorted(str(m) for m in modality.values()))
            raise PacsError(f"PACS {self.url}: study {study_uid} has no CT series (found: {found})")
        if len(ct) > 1:
            raise PacsError(f"PACS {self.url}: study {study_uid} has {len(ct)} CT series, pick one: {', '.join(ct)}")
        return ct[0]

    def fetch_series(self, study_uid: str, series_uid: str, folder: Path) -> int:
        """Retrieve every instance of the series into folder (one .dcm file each); their count."""
        datasets = self._call(
            "series retrieval",
            lambda: self._client.retrieve_series(study_instance_uid=study_uid, series_instance_uid=series_uid),
        )
        if not datasets:
            raise PacsError(f"PACS {self.url}: series {series_uid} has no instances")
        for k, ds in enumerate(datasets):
            ds.save_as(os.fspath(folder / f"{k:06d}.dcm"), enforce_file_format=True)
        return len(datasets)

    def store(self, datasets: Iterable[Any]) -> None:
        """STOW-RS the datasets in one request (the PACS stores all or answers an error)."""
        datasets = list(datasets)
        answer = self._call("store", lambda: self._client.store_instances(datasets=datasets))
        failed = getattr(answer, "FailedSOPSequence", None)
        if failed:
            raise PacsError(f"PACS {self.url}: store failed for {len(failed)} of {len(datasets)} objects")


def _value(record: dict, tag: str) -> Optional[str]:
    values = record.get(tag, {}).get("Value") or [None]
    return values[0]
