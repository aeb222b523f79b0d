"""TritonRuntime against a real tritonserver (see conftest.py), compared with onnxruntime."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from races import ClosingBatch
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from engines.manifest import Manifest, read_manifest
from engines.runtimes import EngineRuntimeError, RuntimeOptions, open_runtime
from engines.runtimes.onnx import OnnxRuntime
from engines.runtimes.triton import TritonRuntime
from engines.triton_repo import model_config


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 1, 64, 64)).astype(np.float32)


@pytest.mark.parametrize("count", [1, 3, 11])
def test_triton_matches_onnxruntime(hip_screen_engine: Path, triton_url: str, count: int) -> None:
    manifest = read_manifest(hip_screen_engine)
    batch = {"image": _images(count, seed=count)}
    with OnnxRuntime(manifest, hip_screen_engine) as local:
        expected = local.infer(batch)
    # 11 > the model's max_batch_size of 8: the runtime must split the request.
    remote = TritonRuntime(manifest, hip_screen_engine, url=triton_url, timeout_seconds=30)
    with remote:
        assert remote.max_batch_size == 8
        got = remote.infer(batch)
    assert sorted(got) == ["features", "logits"]
    for name, value in expected.items():
        assert got[name].dtype == np.float32 and got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4)


def test_open_runtime_picks_triton(hip_screen_engine: Path, triton_url: str) -> None:
    options = RuntimeOptions(backend="triton", triton_url=triton_url, triton_timeout_seconds=10)
    runtime = open_runtime(hip_screen_engine, options)
    try:
        assert isinstance(runtime, TritonRuntime)
        assert runtime.infer({"image": _images(2)})["logits"].shape == (2, 8)
    finally:
        runtime.close()
    with pytest.raises(EngineRuntimeError, match="runtime is closed"):
        runtime.infer({"image": _images(1)})


def test_model_not_in_repository_is_refused(hip_screen_engine: Path, triton_url: str) -> None:
    manifest = dataclasses.replace(read_manifest(hip_screen_engine), name="absent_engine")
    with pytest.raises(
        EngineRuntimeError, match=rf"Triton at {triton_url}, model 'absent_engine' .*not ready"
    ):
        TritonRuntime(manifest, hip_screen_engine, url=triton_url, timeout_seconds=10)


def test_other_engine_version_is_refused(hip_screen_engine: Path, triton_url: str) -> None:
    manifest = dataclasses.replace(read_manifest(hip_screen_engine), version="9.0.0")
    with pytest.raises(
        EngineRuntimeError, match=r"serves engine version '1\.2\.3-test'.*says '9\.0\.0'"
    ):
        TritonRuntime(manifest, hip_screen_engine, url=triton_url, timeout_seconds=10)


def test_other_onnx_is_refused(hip_screen_engine: Path, triton_url: str) -> None:
    manifest = read_manifest(hip_screen_engine)
    artefacts = {
        **manifest.artefacts,
        "onnx_fp32": dataclasses.replace(manifest.artefacts["onnx_fp32"], sha256="0" * 64),
    }
    manifest = dataclasses.replace(manifest, artefacts=artefacts)
    with pytest.raises(EngineRuntimeError, match=r"serves ONNX SHA-256 .*says '0{64}'"):
        TritonRuntime(manifest, hip_screen_engine, url=triton_url, timeout_seconds=10)


def test_unreachable_server_names_the_url(hip_screen_engine: Path, free_port: int) -> None:
    url = f"127.0.0.1:{free_port}"  # nothing listens there
    manifest = read_manifest(hip_screen_engine)
    with pytest.raises(EngineRuntimeError, match=rf"Triton at {url}, .*liveness check .*failed"):
        TritonRuntime(manifest, hip_screen_engine, url=url, timeout_seconds=5)


def test_bad_timeout_is_refused(hip_screen_engine: Path) -> None:
    with pytest.raises(EngineRuntimeError, match="timeout_seconds: expected > 0, got 0"):
        TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine, timeout_seconds=0)


def test_missing_tritonclient_is_named(
    hip_screen_engine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # not installed
    with pytest.raises(
        EngineRuntimeError,
        match=r"^the triton backend needs tritonclient: pip install 'tritonclient\[grpc\]'$",
    ):
        TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine)


class _FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """A Triton gRPC peer that answers as told: not live, not ready, or an incomplete
    response (what a real tritonserver cannot be made to do on demand)."""

    def __init__(self, manifest: Manifest) -> None:
        self.live = True
        self.ready = True
        self.outputs = ("logits", "features")  # what ModelInfer answers with
        self.failing = False  # ModelInfer answers UNAVAILABLE (a server restarting)
        self.batches: list[int] = []  # the batch size of each ModelInfer request
        # The config write_triton_repo would have written for this engine.
        self.config = text_format.Parse(
            model_config(manifest, "onnxruntime"), model_config_pb2.ModelConfig()
        )

    def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=self.live)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.ready)

    def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=True)

    def ModelConfig(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelConfigResponse(config=self.config)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        if self.failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is restarting")
        batch = request.inputs[0].shape[0]
        self.batches.append(batch)
        shapes = {"logits": (batch, 8), "features": (batch, 2048, 2, 2)}
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version
        )
        for name in self.outputs:
            response.outputs.add(name=name, datatype="FP32", shape=shapes[name])
            response.raw_output_contents.append(np.zeros(shapes[name], np.float32).tobytes())
        return response


def _serve(fake: _FakeTriton, port: int = 0) -> tuple[Any, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


@pytest.fixture
def fake_triton(hip_screen_engine: Path) -> Iterator[tuple[str, _FakeTriton]]:
    """The fake's loopback gRPC address (an ephemeral port) and the fake, stopped after."""
    fake = _FakeTriton(read_manifest(hip_screen_engine))
    server, port = _serve(fake)
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        server.stop(None).wait()


@pytest.mark.parametrize(
    ("live", "ready", "state"), [(False, True, "live"), (True, False, "ready")]
)
def test_server_not_live_or_not_ready_is_refused(
    hip_screen_engine: Path,
    fake_triton: tuple[str, _FakeTriton],
    live: bool,
    ready: bool,
    state: str,
) -> None:
    url, fake = fake_triton
    fake.live, fake.ready = live, ready
    with pytest.raises(
        EngineRuntimeError,
        match=rf"^Triton at {url}, model 'hip_screen' version 1: server is not {state}$",
    ):
        TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine, url=url)


def test_a_served_shape_other_than_the_manifests_is_refused_at_open(
    hip_screen_engine: Path, fake_triton: tuple[str, _FakeTriton]
) -> None:
    # Only the names were compared: a config whose logits had 3 columns opened, and every
    # study then failed at triage with a ValueError.
    url, fake = fake_triton
    [logits] = [t for t in fake.config.output if t.name == "logits"]
    logits.dims[:] = [3]
    with pytest.raises(
        EngineRuntimeError,
        match=r"^hip_screen on triton: output 'logits' is \[-1, 3\] in the model, the manifest "
        r"says \[-1, 8\] \(-1 = any\)$",
    ):
        TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine, url=url)


def test_response_without_an_output_is_refused(
    hip_screen_engine: Path, fake_triton: tuple[str, _FakeTriton]
) -> None:
    url, fake = fake_triton
    with TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine, url=url) as runtime:
        assert runtime.infer({"image": _images(2)})["features"].shape == (2, 2048, 2, 2)
        fake.outputs = ("logits",)
        with pytest.raises(
            EngineRuntimeError,
            match=rf"^Triton at {url}, model 'hip_screen' version 1: "
            r"response lacks output 'features'$",
        ):
            runtime.infer({"image": _images(2)})


def test_a_close_under_a_running_batch_is_an_engine_error(
    hip_screen_engine: Path, fake_triton: tuple[str, _FakeTriton]
) -> None:
    url, _ = fake_triton
    runtime = TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine, url=url)
    # A stop closes the client while a job's batch is on its way: was gRPC's ValueError
    # ("Cannot invoke RPC on closed channel!"), failed for good as an internal error.
    with pytest.raises(EngineRuntimeError, match=r"^hip_screen on triton: runtime is closed$"):
        runtime.infer(ClosingBatch(runtime, _images(1)))


def test_after_a_failure_the_served_model_is_checked_again(
    hip_screen_engine: Path, fake_triton: tuple[str, _FakeTriton]
) -> None:
    # The server restarted with another repository: its engine's answers were labelled with
    # this manifest's version, and a smaller max batch failed every pelvis until a restart.
    url, fake = fake_triton
    with TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine, url=url) as runtime:
        runtime.infer({"image": _images(2)})
        fake.failing = True
        with pytest.raises(EngineRuntimeError, match=r"inference failed: .*restarting"):
            runtime.infer({"image": _images(2)})
        fake.failing = False
        served = fake.config.parameters["engine_version"]
        served.string_value = "2.0.0-other"
        with pytest.raises(EngineRuntimeError, match=r"serves engine version '2\.0\.0-other'"):
            runtime.infer({"image": _images(2)})
        served.string_value = read_manifest(hip_screen_engine).version
        fake.config.max_batch_size = 1  # the new repository's
        fake.batches.clear()
        assert runtime.infer({"image": _images(2)})["logits"].shape == (2, 8)
        assert fake.batches == [1, 1]
        runtime.infer({"image": _images(2)})  # checked once: no failure since
        assert fake.batches == [1, 1, 1, 1]


def test_a_server_back_from_a_restart_is_reached_within_seconds(hip_screen_engine: Path) -> None:
    # gRPC's reconnect backoff grows to 120 s: a server ready again was still refused
    # ("Connection refused") for ~25 s, using up the pipeline's retries of a job.
    manifest = read_manifest(hip_screen_engine)
    fake = _FakeTriton(manifest)
    server, port = _serve(fake)
    url = f"127.0.0.1:{port}"
    runtime = TritonRuntime(manifest, hip_screen_engine, url=url, timeout_seconds=2)
    try:
        runtime.infer({"image": _images(1)})
        server.stop(None).wait()
        down = time.monotonic()
        while time.monotonic() - down < 12:  # the node retrying while the server is down
            with pytest.raises(EngineRuntimeError):
                runtime.infer({"image": _images(1)})
            time.sleep(0.5)
        server, _ = _serve(fake, port)
        back = time.monotonic()
        while True:
            try:
                runtime.infer({"image": _images(1)})
                break
            except EngineRuntimeError:
                assert time.monotonic() - back < 30
                time.sleep(0.1)
        assert time.monotonic() - back < 2.5
    finally:
        runtime.close()
        server.stop(None).wait()


def test_a_reply_over_grpcs_default_4_mib_is_received(
    hip_screen_engine: Path, fake_triton: tuple[str, _FakeTriton]
) -> None:
    # Giving tritonclient any channel_args drops its own (a 2 GiB message limit): a
    # pelvis's features at the production size (2 MiB per hip) were refused as larger
    # than gRPC's default 4 MiB.
    url, fake = fake_triton
    fake.config.max_batch_size = 0  # one request for the whole batch
    for tensor in [*fake.config.input, *fake.config.output]:  # the batch axis in the dims
        tensor.dims[:] = [-1, *tensor.dims]
    with TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine, url=url) as runtime:
        features = runtime.infer({"image": _images(140)})["features"]
    assert features.shape == (140, 2048, 2, 2) and features.nbytes > 4 * 2**20
