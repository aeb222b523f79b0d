"""The demo's PACS stand-in: a pynetdicom Storage SCP that keeps what it receives.

Like any PACS it answers C-ECHO, so the node's destination check finds it reachable.

It stores each instance under ``folder/<study>/<sop>.dcm`` and remembers when
it arrived, so the demo can show the time to result as a PACS would see it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.receive.header import is_valid_uid
from dicom_node.send.echo import VERIFICATION  # what the node's destination check sends

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
RESULT_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
)


class StandInPacs:
    def __init__(self, folder: Path, ae_title: str = "DEMO_PACS") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.received: dict[str, tuple[str, str, float]] = {}  # sop -> (study, class, time)
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the PACS stand-in is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        for sop_class in (VERIFICATION, *RESULT_CLASSES):
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _store(self, event: evt.Event) -> int:
        try:
            ds: Dataset = event.dataset
            ds.file_meta = event.file_meta
            study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
            if not (is_valid_uid(study) and is_valid_uid(sop)):  # they become a path
                return CANNOT_UNDERSTAND
            target = self.folder / study / f"{sop}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
        except (OSError, AttributeError, ValueError):
            return OUT_OF_RESOURCES
        with self._lock:
            self.received[sop] = (study, str(ds.SOPClassUID), time.time())
        return SUCCESS

    def objects(self, study_uid: str) -> list[tuple[str, str, float]]:
        """(SOP Instance UID, SOP Class UID, arrival time) of what the study received."""
        with self._lock:
            return [
                (sop, cls, at) for sop, (st, cls, at) in self.received.items() if st == study_uid
            ]
