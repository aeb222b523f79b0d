"""``python -m dicom_node serve`` as a child process, started and killed as a test likes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml
from orthanc import free_port, wait_for


class PortTakenError(AssertionError):
    """The node could not bind its port."""


class NodeProcess:
    """``python -m dicom_node serve`` from a config file; the test kills it as it likes."""

    def __init__(self, folder: Path, config: dict[str, object]) -> None:
        self.folder = folder
        self.config = folder / "node.yaml"
        self._settings = config
        self.config.write_text(yaml.safe_dump(config))
        self.port = int(config["node"]["port"])  # type: ignore[index]
        self.log = folder / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._listened = False

    def start(self) -> None:
        """Start and wait until it listens. A port picked free a moment ago can be taken in
        between (an outgoing connection's ephemeral port); before the node first listened,
        that is retried on a new port (after that, peers know the port, so it fails)."""
        for _ in range(3):
            try:
                self._start()
            except PortTakenError:
                if self._listened:
                    raise
                self.port = free_port()
                self._settings["node"]["port"] = self.port  # type: ignore[index]
                self.config.write_text(yaml.safe_dump(self._settings))
                continue
            self._listened = True
            return
        raise AssertionError(f"no free port for the node after 3 tries (last {self.port})")

    def _start(self) -> None:
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
                if "Address already in use" in text:
                    raise PortTakenError(self.port)
                raise AssertionError(f"the node exited with {proc.returncode}:\n{text[-3000:]}")
            return "listening as" in text

        wait_for(listening, 60, "the node to listen")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None
