"""The C-STORE metrics' labels stay bounded whoever calls."""

from __future__ import annotations

from pathlib import Path

from dicom_clients import dataset_bytes
from helpers import tiny_image
from prometheus_client import CollectorRegistry
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.config import AssemblyConfig
from dicom_node.metrics import MAX_CALLING_AE_LABELS, Metrics
from dicom_node.receive.store import SUCCESS, Receiver
from dicom_node.spool import Spool
from dicom_node.state import State


def test_calling_ae_label_values_are_bounded(tmp_path: Path) -> None:
    ds = tiny_image()
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    stream = dataset_bytes(path)
    registry = CollectorRegistry()
    state = State(tmp_path / "state.db", AssemblyConfig())
    receiver = Receiver(Spool(tmp_path / "spool", 0), state, 10**6, metrics=Metrics(registry))
    try:
        for i in range(100):  # any peer may call: node.allowed_calling_aes is empty by default
            response = receiver.store(
                i, f"SCANNER{i}", ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, stream
            )
            assert int(response.Status) == SUCCESS
    finally:
        state.close()
    for name in ("dicom_node_instances_received_total", "dicom_node_received_bytes_total"):
        values = {
            s.labels["calling_ae"]
            for family in registry.collect()
            for s in family.samples
            if s.name == name
        }
        assert len(values) == MAX_CALLING_AE_LABELS + 1
        assert {"SCANNER0", "other"} <= values
    assert (
        registry.get_sample_value(
            "dicom_node_instances_received_total",
            {"sop_class": "Computed Radiography Image Storage", "calling_ae": "other"},
        )
        == 100 - MAX_CALLING_AE_LABELS
    )
