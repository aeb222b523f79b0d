"""A throwaway Orthanc (Debian's /usr/sbin/Orthanc) as the PACS in integration tests.

:func:`run_orthanc` starts one on ephemeral ports with a single JSON configuration
written into a work folder; a Lua ``OnStoredInstance`` hook routes every DX/CR
instance to a DICOM modality named ``node`` (the triage node), except those sent by
an AE title in ``skip_calling_aes`` (the loop guard: the node's own results come back
from the node's AE title). Every routing decision is printed to Orthanc's log
("Lua says: route ..." / "Lua says: skip ..."). The REST helpers use urllib only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dicom_node.synthetic.dcmtk import storescu as run_storescu

ORTHANC = "/usr/sbin/Orthanc"
ROUTE_MODALITY = "node"  # what deploy/orthanc/route.lua sends to
SHIPPED_ROUTE = Path(__file__).resolve().parents[2] / "deploy" / "orthanc" / "route.lua"
_SKIP_LINE = re.compile(r"^local SKIP = \{.*\}$", re.MULTILINE)

_T = TypeVar("_T")
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # printable ASCII without backslash
_FATAL = re.compile(r"Uncaught exception, stopping now")
_PORT_IN_USE = re.compile(r"address already in use|cannot bind|bind.*fail|port.*in use", re.I)
# urllib honours http_proxy & co.; loopback requests must never go through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], _T | None], timeout: float, what: str, interval: float = 0.05
) -> _T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises AssertionError naming ``what`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class RouteTarget:
    """The DICOM node Orthanc routes to (registered as modality ``node``)."""

    ae_title: str
    host: str
    port: int


class Orthanc:
    """A running Orthanc: its ports, AE title, log, and REST helpers (JSON over urllib)."""

    def __init__(self, *, http_port: int, dicom_port: int, aet: str, log_path: Path) -> None:
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.aet = aet
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{http_port}"

    def __repr__(self) -> str:
        return f"Orthanc(aet={self.aet!r}, http={self.http_port}, dicom={self.dicom_port})"

    # -- raw REST -------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 10
    ) -> bytes:
        """One REST call; return the response body. HTTP errors raise with Orthanc's answer."""
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        try:
            with _OPENER.open(req, timeout=timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[-2000:]
            raise AssertionError(f"Orthanc {method} {path}: HTTP {exc.code}: {detail}") from exc

    def get(self, path: str) -> Any:
        """GET ``path`` and decode the JSON answer."""
        return json.loads(self.request("GET", path))

    def post(self, path: str, payload: Any) -> Any:
        """POST ``payload`` (a str is sent as is, anything else as JSON); decode the answer."""
        body = payload if isinstance(payload, str) else json.dumps(payload)
        return json.loads(self.request("POST", path, body.encode("utf-8")))

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    # -- convenience ----------------------------------------------------------------

    def system(self) -> dict[str, Any]:
        """``/system``: version, AE title, ports."""
        answer: dict[str, Any] = self.get("/system")
        return answer

    def instances(self) -> list[str]:
        """The Orthanc IDs of every stored instance."""
        ids: list[str] = self.get("/instances")
        return ids

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """One instance's tags by keyword (``/instances/{id}/simplified-tags``)."""
        tags: dict[str, Any] = self.get(f"/instances/{instance_id}/simplified-tags")
        return tags

    def instance_metadata(self, instance_id: str) -> dict[str, str]:
        """One instance's metadata (RemoteAET, CalledAET, Origin, ...)."""
        meta: dict[str, str] = self.get(f"/instances/{instance_id}/metadata?expand")
        return meta

    def instance_file(self, instance_id: str) -> bytes:
        """The stored Part 10 file of one instance."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def find_study(self, study_uid: str) -> str | None:
        """The Orthanc ID of the study with this Study Instance UID, or None."""
        matches: list[dict[str, Any]] = self.post("/tools/lookup", study_uid)
        for match in matches:
            if match.get("Type") == "Study":
                study_id: str = match["ID"]
                return study_id
        return None

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Simplified tags of every instance of a study (empty when Orthanc lacks it).

        Each dict also carries the Orthanc instance ID under ``"ID"``.
        """
        study_id = self.find_study(study_uid)
        if study_id is None:
            return []
        out: list[dict[str, Any]] = []
        for instance in self.get(f"/studies/{study_id}/instances"):
            tags = self.instance_tags(instance["ID"])
            tags["ID"] = instance["ID"]
            out.append(tags)
        return out

    def count_by_modality(self, study_uid: str) -> dict[str, int]:
        """How many instances of the study Orthanc holds, per Modality."""
        counts = Counter(str(t.get("Modality", "")) for t in self.study_instances(study_uid))
        return dict(counts)

    def wait_for(
        self, predicate: Callable[[], _T | None], timeout: float, what: str, interval: float = 0.05
    ) -> _T:
        """:func:`wait_for`, with the tail of Orthanc's log in the failure message."""
        try:
            return wait_for(predicate, timeout, what, interval)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- Orthanc log (tail) ---\n{self.log_tail()}") from None

    def wait_for_log(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        """Wait until Orthanc's log matches the regular expression ``pattern``."""
        regex = re.compile(pattern)
        return self.wait_for(
            lambda: regex.search(self.log_text()), timeout, f"Orthanc log to match {pattern!r}"
        )

    def log_text(self) -> str:
        """Everything Orthanc has logged so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _ae_title(value: str, what: str) -> str:
    if not _AE_TITLE.fullmatch(value) or not value.strip():
        raise ValueError(f"{what}: not a valid AE title: {value!r}")
    return value


def _lua_script(route_to: RouteTarget | None, skip_calling_aes: Sequence[str]) -> str:
    """The ``OnStoredInstance`` hook; strings are JSON-quoted (valid Lua for ASCII)."""
    if route_to is None:
        return (
            "-- No route target: nothing is forwarded.\n"
            "function OnStoredInstance(instanceId, tags, metadata, origin)\n"
            "  print('stored ' .. instanceId .. ' (no route target)')\n"
            "end\n"
        )
    skip = ", ".join(
        f"[{json.dumps(_ae_title(ae, 'skip_calling_aes'))}] = true" for ae in skip_calling_aes
    )
    # The shipped hook itself, with this harness's skip list: the tests run what sites run.
    script, replaced = _SKIP_LINE.subn(
        f"local SKIP = {{ {skip} }}", SHIPPED_ROUTE.read_text(encoding="ascii")
    )
    if replaced != 1:
        raise ValueError(f"{SHIPPED_ROUTE}: expected one 'local SKIP = {{ ... }}' line")
    return script


def _config(
    work: Path,
    *,
    aet: str,
    http_port: int,
    dicom_port: int,
    route_to: RouteTarget | None,
    lua_path: Path,
) -> dict[str, Any]:
    modalities: dict[str, Any] = {}
    if route_to is not None:
        modalities[ROUTE_MODALITY] = {
            "AET": _ae_title(route_to.ae_title, "route_to.ae_title"),
            "Host": route_to.host,
            "Port": route_to.port,
        }
    storage = str(work / "storage")
    return {
        "Name": f"test-{aet}",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "Plugins": [],
        "LuaScripts": [str(lua_path)],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": True,  # exists in 1.10 (promiscuous C-STORE SCP)
        "DicomModalities": modalities,
        "StableAge": 1,
        "OverwriteInstances": False,
        # As deploy/orthanc/orthanc.json: the route's failed jobs outlive a restart.
        "SaveJobs": True,
        "JobsHistorySize": 1000,
    }


def _start(
    work: Path,
    *,
    aet: str,
    route_to: RouteTarget | None,
    skip_calling_aes: Sequence[str],
    log_path: Path,
    dicom_port: int | None = None,
) -> tuple[subprocess.Popen[bytes], Orthanc]:
    lua_path = work / "route.lua"
    lua_path.write_text(_lua_script(route_to, skip_calling_aes), encoding="ascii")
    http_port = free_port()
    if dicom_port is None:
        dicom_port = free_port()
    while dicom_port == http_port:
        http_port = free_port()
    config_path = work / "orthanc.json"
    config = _config(
        work,
        aet=aet,
        http_port=http_port,
        dicom_port=dicom_port,
        route_to=route_to,
        lua_path=lua_path,
    )
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    env = {**os.environ, "TCP_NODELAY": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [ORTHANC, str(config_path)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    orthanc = Orthanc(http_port=http_port, dicom_port=dicom_port, aet=aet, log_path=log_path)
    return proc, orthanc


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Terminate (SIGTERM: Orthanc shuts down cleanly, ~3 s), kill after ``timeout``; reap."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _log_since(log_path: Path, offset: int) -> str:
    with open(log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")


def _wait_ready(
    proc: subprocess.Popen[bytes], orthanc: Orthanc, log_offset: int, timeout: float
) -> bool:
    """True once ``GET /system`` answers; False if Orthanc failed; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            return False
        # After a failed start-up Orthanc may take ~10 s to exit (its DICOM server stops).
        if _FATAL.search(_log_since(orthanc.log_path, log_offset)):
            return False
        try:
            orthanc.request("GET", "/system", timeout=1)
            return True
        except (OSError, AssertionError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Orthanc did not answer GET /system on port {orthanc.http_port} within "
                f"{timeout:g} s\n--- Orthanc log (tail) ---\n{orthanc.log_tail()}"
            )
        time.sleep(0.05)


@contextmanager
def run_orthanc(
    work: Path,
    *,
    aet: str = "ORTHANC",
    route_to: RouteTarget | None = None,
    skip_calling_aes: Sequence[str] = (),
    start_timeout: float = 30,
    dicom_port: int | None = None,
) -> Iterator[Orthanc]:
    """Run Orthanc with its config, Lua hook, storage, index and log under ``work``.

    ``dicom_port`` fixes the DICOM port (a peer configured before Orthanc starts);
    by default both ports are ephemeral.

    Retries with new ports (twice) if a port was taken between choosing and binding.
    Orthanc is terminated (killed if it lingers) and reaped on exit, even on error.
    """
    _ae_title(aet, "aet")
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "orthanc.log"
    for attempt in range(3):
        start_offset = log_path.stat().st_size if log_path.exists() else 0
        proc, orthanc = _start(
            work,
            aet=aet,
            route_to=route_to,
            skip_calling_aes=skip_calling_aes,
            log_path=log_path,
            dicom_port=dicom_port,
        )
        try:
            ready = _wait_ready(proc, orthanc, start_offset, start_timeout)
        except BaseException:
            _stop(proc)
            raise
        if ready:
            break
        _stop(proc, timeout=1)  # it is failing anyway: do not wait for a clean stop
        this_run = _log_since(log_path, start_offset)
        if attempt == 2 or not _PORT_IN_USE.search(this_run):
            raise RuntimeError(
                f"Orthanc failed to start (exit status {proc.returncode})\n"
                f"--- Orthanc log (tail) ---\n{orthanc.log_tail()}"
            )
    try:
        yield orthanc
    finally:
        _stop(proc)


def storescu_into(
    orthanc: Orthanc,
    files: Sequence[Path],
    calling_ae: str = "MODALITY",
    *,
    profile: tuple[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` to Orthanc with dcmtk storescu (``TCP_NODELAY=1``) over one association.

    Raises AssertionError with storescu's output tail if it fails or reports an error.
    ``profile`` is a ``-xf`` association profile (see ``storescu_profile``) for
    sending compressed files unchanged.
    """
    if not files:
        raise ValueError("storescu_into: no files")
    result = run_storescu(
        "127.0.0.1",
        orthanc.dicom_port,
        files,
        called_ae=orthanc.aet,
        calling_ae=calling_ae,
        profile=profile,
        timeout=timeout,
    )
    output = (result.stdout + result.stderr).strip()
    errors = [line for line in output.splitlines() if line.startswith(("E:", "F:"))]
    if result.returncode != 0 or errors:
        tail = "\n".join(output.splitlines()[-30:])
        raise AssertionError(
            f"storescu {calling_ae} -> {orthanc.aet} exited with {result.returncode}:\n{tail}"
        )
    return result
