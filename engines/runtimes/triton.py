"""Triton Inference Server over gRPC: the remote, scale-out backend.

The model served is the manifest's name at Triton version 1. Triton versions are
integers and ours are strings, so :func:`engines.triton_repo.write_triton_repo` writes every
engine as version 1 and records the manifest's version and ONNX SHA-256 in the model
config's ``parameters``; opening checks both, so a node never runs a different engine than
its manifest describes (a stale repository is refused, not silently used).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.manifest import Manifest
from engines.runtimes.base import Array, EngineRuntimeError, Runtime, check_signature
from engines.triton_repo import SHA256_PARAMETER, TRITON_VERSION, VERSION_PARAMETER

log = logging.getLogger(__name__)

RECONNECT_MS = 1000  # the longest gRPC waits between attempts to reach a server that was gone


def channel_args(grpcclient: Any) -> list[tuple[str, int]]:
    """tritonclient's own channel options, plus the reconnect cap: given any channel_args,
    tritonclient sets none of its own, and gRPC's 4 MiB receive limit then refused a
    pelvis's features at the production size (2 MiB per hip)."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE

    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MS),
    ]


class TritonRuntime(Runtime):
    backend = "triton"

    def __init__(
        self,
        manifest: Manifest,
        folder: Path,
        url: str = "127.0.0.1:8001",
        timeout_seconds: float = 30.0,
    ) -> None:
        super().__init__(manifest, folder)
        if timeout_seconds <= 0:
            raise EngineRuntimeError(f"triton timeout_seconds: expected > 0, got {timeout_seconds}")
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as exc:
            raise EngineRuntimeError(
                "the triton backend needs tritonclient: pip install 'tritonclient[grpc]'"
            ) from exc
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.model_version = str(TRITON_VERSION)
        self._grpc: Any = grpcclient
        # gRPC waits up to 120 s between reconnect attempts by default: a server back from
        # a restart was refused "Connection refused" for ~25 s more, using up the pipeline's
        # retries of a job. Reconnect at least once a second.
        self._client: Any = grpcclient.InferenceServerClient(
            url=url, channel_args=channel_args(grpcclient)
        )
        self._recheck = False  # a call failed: the server may have restarted with other models
        try:
            self.max_batch_size = self._check_served()
        except BaseException:
            self._client.close()
            raise
        log.info(
            "Triton at %s serves %s %s (max batch %d)",
            url,
            manifest.name,
            manifest.version,
            self.max_batch_size,
        )

    @property
    def _where(self) -> str:
        return f"Triton at {self.url}, model {self.manifest.name!r} version {self.model_version}"

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """One client call with the timeout; a server error becomes an EngineRuntimeError."""
        from tritonclient.utils import InferenceServerException

        try:
            return getattr(self._client, method)(
                *args, client_timeout=self.timeout_seconds, **kwargs
            )
        except InferenceServerException as exc:
            raise EngineRuntimeError(f"{self._where}: {what} failed: {exc}") from exc
        except ValueError as exc:
            if self._closed:  # close() from another thread (a stop) closed the channel under us
                raise EngineRuntimeError(
                    f"{self.manifest.name} on {self.backend}: runtime is closed"
                ) from exc
            raise

    def _check_served(self) -> int:
        """Refuse a server or model that is not ready or not ours; return the max batch size."""
        name = self.manifest.name
        if not self._call("liveness check (is the server running?)", "is_server_live"):
            raise EngineRuntimeError(f"{self._where}: server is not live")
        if not self._call("readiness check", "is_server_ready"):
            raise EngineRuntimeError(f"{self._where}: server is not ready")
        if not self._call("model readiness check", "is_model_ready", name, self.model_version):
            raise EngineRuntimeError(
                f"{self._where}: model is not ready (is it in the server's model repository "
                "and loaded? write one with engines.triton_repo.write_triton_repo)"
            )
        config = self._call(
            "reading the model config", "get_model_config", name, self.model_version, as_json=True
        )["config"]
        parameters = config.get("parameters", {})
        served = parameters.get(VERSION_PARAMETER, {}).get("string_value")
        if served != self.manifest.version:
            raise EngineRuntimeError(
                f"{self._where}: serves engine version {served!r} "
                f"(config parameter {VERSION_PARAMETER!r}), manifest says {self.manifest.version!r}"
            )
        onnx = self.manifest.artefacts.get("onnx_fp32")
        served_sha = parameters.get(SHA256_PARAMETER, {}).get("string_value")
        if onnx is not None and served_sha != onnx.sha256:
            raise EngineRuntimeError(
                f"{self._where}: serves ONNX SHA-256 {served_sha!r}, manifest says {onnx.sha256!r}"
            )
        for kind, specs in (("input", self.input_spec), ("output", self.output_spec)):
            have = sorted(t["name"] for t in config.get(kind, []))
            want = sorted(s.name for s in specs)
            if have != want:
                raise EngineRuntimeError(
                    f"{self._where}: serves {kind}s {have}, manifest says {want}"
                )
        max_batch_size = int(config.get("max_batch_size", 0))
        # Shapes too, as the other runtimes check at open: a config whose dims differ
        # (hand-edited) gave arrays of another shape, and every study failed later.
        shapes = {
            kind: {t["name"]: _served_shape(t, max_batch_size > 0) for t in config.get(kind, [])}
            for kind in ("input", "output")
        }
        check_signature(self.manifest, "triton", shapes["input"], shapes["output"])
        return max_batch_size

    def _run(self, batch: dict[str, Array]) -> Mapping[str, npt.ArrayLike]:
        if self._recheck:
            # After a failure the server may be another one, or restarted with another
            # repository: checked once, as at opening (a different engine had its answers
            # labelled with this manifest's version, and a smaller max batch failed every
            # pelvis until the node restarted).
            self.max_batch_size = self._check_served()
            self._recheck = False
        try:
            return self._chunks(batch)
        except EngineRuntimeError:
            self._recheck = True
            raise

    def _chunks(self, batch: dict[str, Array]) -> Mapping[str, npt.ArrayLike]:
        size = next(iter(batch.values())).shape[0]
        # Triton rejects a request over the model's max_batch_size; 0 means no batching limit.
        step = self.max_batch_size or size
        parts: dict[str, list[Array]] = {spec.name: [] for spec in self.output_spec}
        for start in range(0, size, step):
            chunk = {name: array[start : start + step] for name, array in batch.items()}
            for name, value in self._infer(chunk).items():
                parts[name].append(value)
        return {name: np.concatenate(values, axis=0) for name, values in parts.items()}

    def _infer(self, chunk: dict[str, Array]) -> dict[str, Array]:
        inputs = []
        for name, array in chunk.items():
            # A value per item travels as (N, 1): the repository reshapes it (triton_repo.py).
            sent = array[:, None] if array.ndim == 1 else array
            tensor = self._grpc.InferInput(name, list(sent.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(sent))
            inputs.append(tensor)
        requested = [self._grpc.InferRequestedOutput(spec.name) for spec in self.output_spec]
        result = self._call(
            "inference",
            "infer",
            self.manifest.name,
            inputs,
            model_version=self.model_version,
            outputs=requested,
        )
        outputs: dict[str, Array] = {}
        for spec in self.output_spec:
            value = result.as_numpy(spec.name)
            if value is None:
                raise EngineRuntimeError(f"{self._where}: response lacks output {spec.name!r}")
            array = np.asarray(value, dtype=np.float32)
            if len(spec.shape) == 1 and array.ndim == 2:
                array = array[:, 0]
            outputs[spec.name] = array
        return outputs

    def _release(self) -> None:
        self._client.close()


def _served_shape(tensor: Mapping[str, Any], batched: bool) -> list[int]:
    """A tensor's shape as a model config serves it: its reshape (else its dims), after
    the batch axis when the model batches (max_batch_size > 0); -1 where dynamic."""
    reshape = tensor.get("reshape")
    dims = reshape.get("shape", []) if isinstance(reshape, Mapping) else tensor.get("dims", [])
    shape = [int(d) for d in dims]
    return [-1, *shape] if batched else shape
