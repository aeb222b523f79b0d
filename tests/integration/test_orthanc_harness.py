"""Smoke test of the Orthanc harness: store, route DX to a node, loop guard on its AE title."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from orthanc import ORTHANC, RouteTarget, run_orthanc, storescu_into
from pydicom.uid import DigitalXRayImageStorageForPresentation, SecondaryCaptureImageStorage
from pynetdicom import AE, evt

from dicom_node.synthetic import StudyIdentity, make_dx, write

pytestmark = pytest.mark.skipif(
    not os.access(ORTHANC, os.X_OK) or shutil.which("storescu") is None,
    reason="needs Debian's Orthanc (/usr/sbin/Orthanc) and dcmtk's storescu",
)

NODE_AET = "TRIAGE"


def test_orthanc_routes_dx_to_the_node_but_not_the_nodes_own_instances(tmp_path: Path) -> None:
    received: list[tuple[str, str]] = []  # (SOP Instance UID, calling AE title)

    def on_store(event: Any) -> int:
        received.append((str(event.request.AffectedSOPInstanceUID), event.assoc.requestor.ae_title))
        return 0x0000

    ae = AE(ae_title=NODE_AET)
    ae.add_supported_context(DigitalXRayImageStorageForPresentation)
    ae.add_supported_context(SecondaryCaptureImageStorage)
    scp = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert scp is not None
    try:
        target = RouteTarget(NODE_AET, "127.0.0.1", scp.server_address[1])
        identity = StudyIdentity.synthetic(7)
        pixels = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
        from_modality = write(make_dx(pixels, identity=identity), tmp_path / "dx1.dcm")
        from_node = write(
            make_dx(pixels, identity=identity, instance_number=2), tmp_path / "dx2.dcm"
        )
        first_uid = pydicom.dcmread(from_modality).SOPInstanceUID
        node_uid = pydicom.dcmread(from_node).SOPInstanceUID
        study_uid = identity.study_uid

        with run_orthanc(
            tmp_path / "orthanc", aet="PACS", route_to=target, skip_calling_aes=[NODE_AET]
        ) as pacs:
            assert pacs.system()["DicomAet"] == "PACS"

            # A modality's DX image is stored and routed to the node, from Orthanc's AE title.
            storescu_into(pacs, [from_modality], calling_ae="MODALITY")
            pacs.wait_for(lambda: received, 10, "the node to receive the routed DX")
            assert received == [(first_uid, "PACS")]
            assert pacs.count_by_modality(study_uid) == {"DX": 1}
            [stored] = pacs.study_instances(study_uid)
            assert stored["SOPInstanceUID"] == first_uid
            assert pacs.instance_metadata(stored["ID"])["RemoteAET"] == "MODALITY"
            assert pydicom.dcmread(io.BytesIO(pacs.instance_file(stored["ID"]))).Modality == "DX"
            assert f"route {stored['ID']} sop={first_uid}" in pacs.log_text()

            # The node's own instance (calling AE TRIAGE) is stored but not routed back.
            storescu_into(pacs, [from_node], calling_ae=NODE_AET)
            pacs.wait_for_log(
                rf"skip \S+ sop={node_uid} modality=DX part=PELVIS from={NODE_AET}: calling AE"
            )
            assert pacs.count_by_modality(study_uid) == {"DX": 2}
            assert len(pacs.instances()) == 2
            assert {t["SOPInstanceUID"] for t in pacs.study_instances(study_uid)} == {
                first_uid,
                node_uid,
            }
            assert (
                f"sop={node_uid} modality=DX part=PELVIS from={NODE_AET} ->" not in pacs.log_text()
            )
            assert received == [(first_uid, "PACS")]
    finally:
        scp.shutdown()


def test_the_harness_runs_the_shipped_route_hook_with_its_own_skip_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orthanc

    shipped = orthanc.SHIPPED_ROUTE.read_text(encoding="ascii")
    script = orthanc._lua_script(RouteTarget(NODE_AET, "127.0.0.1", 104), ["NODE_A", "NODE_B"])
    assert 'local SKIP = { ["NODE_A"] = true, ["NODE_B"] = true }' in script
    assert script.replace(
        'local SKIP = { ["NODE_A"] = true, ["NODE_B"] = true }', 'local SKIP = { ["TRIAGE"] = true }'
    ) == shipped  # fmt: skip
    changed = tmp_path / "route.lua"
    changed.write_text(shipped.replace("local SKIP", "SKIP"), encoding="ascii")
    monkeypatch.setattr(orthanc, "SHIPPED_ROUTE", changed)
    with pytest.raises(
        ValueError, match=r"route\.lua: expected one 'local SKIP = \{ \.\.\. \}' line"
    ):
        orthanc._lua_script(RouteTarget(NODE_AET, "127.0.0.1", 104), [NODE_AET])
