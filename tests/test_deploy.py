from __future__ import annotations

import configparser
from pathlib import Path

from dicom_node.config import Config

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "systemd" / "dicom-node.service"


def test_systemd_unit_runs_serve_and_outlasts_the_drain() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    assert service["ExecStart"].split()[1:4] == ["serve", "--config", "/etc/dicom-node/config.yaml"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > Config().node.drain_seconds
    assert service["NoNewPrivileges"] == "true"


def test_systemd_unit_can_raise_the_capability_it_grants() -> None:
    # The kernel raises an ambient capability only if the bounding set still holds it.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    ambient = set(service["AmbientCapabilities"].split())
    assert ambient == {"CAP_NET_BIND_SERVICE"}
    assert ambient <= set(service["CapabilityBoundingSet"].split())
