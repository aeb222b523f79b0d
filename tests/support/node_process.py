"""``python -m dicom_node serve`` as a child process, started and killed as a test likes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml
from orthanc import wait_for


class NodeProcess:
    """``python -m dicom_node serve`` from a config file; the test kills it as it likes."""

    def __init__(self, folder: Path, config: dict[str, object]) -> None:
        self.folder = folder
        self.config = folder / "node.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.port = int(config["node"]["port"])  # type: ignore[index]
        self.log = folder / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node", "serve", "--config", str(self.config)],
                stdout=log, stderr=log,
            )  # fmt: skip
        proc = self.proc

        def listening() -> bool:
            text = self.log.read_text()[offset:]
            if proc.poll() is not None:
                raise AssertionError(f"the node exited with {proc.returncode}:\n{text[-3000:]}")
            return "listening as" in text

        wait_for(listening, 60, "the node to listen")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None
