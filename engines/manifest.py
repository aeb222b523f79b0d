"""The manifest: one YAML file beside an engine's artefacts that says everything a runtime needs.

Name, version, classes with SNOMED CT codes and thresholds, the input
specification and preprocessing, output tensor names, what the heat map needs,
the SHA-256 of every artefact, and how the engine was trained and evaluated.
A hospital that trains its own checkpoint writes the same file; the node trusts
nothing else (an artefact whose hash differs is refused).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dicom_node.errors import DicomNodeError, not_utf8
from engines.catalog import Finding

MANIFEST_NAME = "manifest.yaml"
SCHEMA = 1
# What serving implements (dicom_node/preprocess.py, engines/regions.py): anything else is refused.
CANONICAL_SIDES = ("R",)
REGIONS = ("hip",)
# The inputs an AP hip region goes to, one per engine (engines.serving names them).
IMAGE_INPUTS = ("image", "ap", "radiograph")
# A manifest that does not say otherwise: every result carries a clinical-use statement.
NOT_FOR_CLINICAL_USE = "not for clinical use: trained on synthetic phantoms"


class ManifestError(DicomNodeError, ValueError):
    """A manifest is missing, malformed, or its artefacts do not match it."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: shape with -1 for the dynamic batch axis."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the input tensor (the node's preprocessing follows this)."""

    size: int  # square edge the hip region is resized to
    mean: float = 0.5  # after windowing to [0, 1]: (x - mean) / std
    std: float = 0.25
    canonical_side: str = "R"  # left hips are mirrored to look like right hips
    region: str = "hip"  # hip region of an AP pelvis (split at the midline)
    # Engines with a CT input: the grid (D, H, W) the volume is fitted into after resampling
    # to isotropic voxels of volume_spacing_mm, and the HU window mapping it to [0, 1].
    volume: tuple[int, int, int] | None = None
    volume_spacing_mm: float = 1.0
    hu_center: float = 500.0
    hu_width: float = 2000.0
    # Engines with clinical variables: the columns of the clinical input, in order
    # (dicom_node.clinical.VECTOR_FIELDS), standardised as ClinicalVariables.as_vector does.
    clinical: tuple[str, ...] = ()
    # Of those columns, the ones no training case set (a category such as sex O that no
    # training patient had, a variable missing throughout): serving reads a value there as
    # missing. None: not recorded (a manifest written before 0.1.0 recorded it; re-export).
    clinical_unseen: tuple[str, ...] | None = None
    # Of the numeric columns, the range (natural units: years, metres, kilograms, kg/m^2)
    # training covered, as its mean +- 4 SD: serving reads a value outside as missing (a
    # weight in pounds, a child's age). None: not recorded (before 0.1.0; re-export).
    clinical_limits: Mapping[str, tuple[float, float]] | None = None


@dataclass(frozen=True)
class Artefact:
    path: str  # relative to the manifest's folder
    sha256: str


@dataclass(frozen=True)
class Heatmap:
    kind: str  # gradcam-gem | gradcam-avg | interpretive-map | none
    features_output: str | None = None  # the feature-map output (Grad-CAM)
    logits_output: str | None = None
    head_artefact: str | None = None  # npz with the linear head's weight (K, C) and bias
    gem_p: float | None = None
    map_output: str | None = None  # interpretive-map: the probability-map output


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    model: str
    model_kwargs: Mapping[str, Any]
    title: str
    classes: tuple[Finding, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Preprocessing
    heatmap: Heatmap
    artefacts: Mapping[str, Artefact]
    probability_output: str  # the output holding logits or probabilities
    output_is_logits: bool  # True: apply softmax; False: already probabilities
    training: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    clinical_use: str = NOT_FOR_CLINICAL_USE
    schema: int = SCHEMA

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def image_input(self) -> TensorSpec:
        """The input the AP hip region goes to (``image``, ``ap`` or ``radiograph``, whatever
        its place in the list: the node fed the first input, so a manifest listing
        ``lateral`` before ``ap`` failed every study)."""
        return next(s for s in self.inputs if s.name in IMAGE_INPUTS)

    def display(self, name: str) -> str:
        """A class's wording for people (banners, the worklist line), else its name."""
        spec = next((c for c in self.classes if c.name == name), None)
        return spec.display if spec is not None and spec.display else name.replace("_", " ")

    def artefact_path(self, folder: Path, key: str) -> Path:
        try:
            return folder / self.artefacts[key].path
        except KeyError:
            raise ManifestError(
                f"{self.name}: manifest lists no artefact {key!r} "
                f"(has: {', '.join(sorted(self.artefacts))})"
            ) from None


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST_NAME
    data = _plain(asdict(manifest))
    tmp = path.with_suffix(".tmp")
    # Flow style for the innermost lists keeps shapes and the confusion matrix one line each.
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:  # saved by an editor in Latin-1: was a traceback
        raise ManifestError(f"{path}: {not_utf8(exc)}; save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a mapping, got {type(raw).__name__}")
    if "schema" not in raw:  # was "expected 1, got None", naming no missing key
        raise ManifestError(f"{path}: schema: required (the manifest format: {SCHEMA})")
    if raw["schema"] != SCHEMA:
        raise ManifestError(
            f"{path}: schema: expected {SCHEMA} (the manifest format this node reads), "
            f"got {raw['schema']!r}"
        )
    known = set(Manifest.__dataclass_fields__)
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:  # a typo (clinical_usage) was dropped, and the default said instead
        raise ManifestError(
            f"{path}: {unknown[0]}: unknown key (known: {', '.join(sorted(known))})"
        )
    try:
        manifest = Manifest(
            name=str(raw["name"]),
            version=str(raw["version"]),
            model=str(raw["model"]),
            model_kwargs=dict(_mapping(raw.get("model_kwargs") or {}, "model_kwargs", path)),
            title=str(raw["title"]),
            classes=tuple(
                _entry(Finding, c, f"classes[{i}]", path) for i, c in enumerate(raw["classes"])
            ),
            inputs=tuple(_tensor(t, f"inputs[{i}]", path) for i, t in enumerate(raw["inputs"])),
            outputs=tuple(_tensor(t, f"outputs[{i}]", path) for i, t in enumerate(raw["outputs"])),
            preprocessing=_preprocessing(raw["preprocessing"], path),
            heatmap=_entry(Heatmap, raw["heatmap"], "heatmap", path),
            artefacts={
                k: _artefact(k, v, path)
                for k, v in _mapping(raw["artefacts"], "artefacts", path).items()
            },
            probability_output=str(raw["probability_output"]),
            output_is_logits=_boolean(raw["output_is_logits"], "output_is_logits", path),
            training=dict(raw.get("training") or {}),
            evaluation=dict(raw.get("evaluation") or {}),
            clinical_use=_clinical_use(raw, path),
            schema=SCHEMA,
        )
    except KeyError as exc:
        raise ManifestError(f"{path}: missing key {exc.args[0]!r}") from None
    except ManifestError:
        raise  # already names the file and the key
    except (TypeError, ValueError, AttributeError) as exc:  # e.g. a shape of 'x', a list
        raise ManifestError(f"{path}: malformed entry ({exc})") from None
    return _consistent(manifest, path)


def _consistent(m: Manifest, path: Path) -> Manifest:
    """What must hold between a manifest's parts: checked once, when the engine opens,
    rather than failing every study (a class list one short of the output, a threshold of
    'high', a heat map reading an output that is not there)."""
    names = m.class_names
    if not names:
        raise ManifestError(f"{path}: classes: expected at least one, got none")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ManifestError(f"{path}: classes: {twice!r} is listed twice")
    for c in m.classes:
        threshold = c.threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not (0.0 < threshold < 1.0)
        ):
            # As triage.thresholds in the config: 0 called every hip present, 1 never.
            raise ManifestError(
                f"{path}: classes[{c.name}].threshold: expected a probability between 0 and 1, "
                f"got {threshold!r}"
            )
        if not valid_display(c.display):
            raise ManifestError(
                f"{path}: classes[{c.name}].display: expected 1-64 characters without "
                f"backslashes or control characters (it goes into the SR), got {c.display!r}"
            )
        _boolean(c.high_risk, f"classes[{c.name}].high_risk", path)
        _boolean(c.normal, f"classes[{c.name}].normal", path)
    version = m.version
    if not valid_version(version):
        raise ManifestError(
            f"{path}: version: expected up to 64 characters without spaces or backslashes "
            f"(it goes into the SR), got {version!r}"
        )
    for c in m.classes:
        if c.code is not None and not (isinstance(c.code, str) and _CODE.fullmatch(c.code)):
            raise ManifestError(
                f"{path}: classes[{c.name}].code: expected a SNOMED CT or DICOM code as a "
                f"quoted string of digits, or null, got {c.code!r}"
            )
        if c.source not in CODE_SOURCES:
            raise ManifestError(
                f"{path}: classes[{c.name}].source: expected one of {', '.join(CODE_SOURCES)}, "
                f"got {c.source!r}"
            )
    outputs = {o.name: o for o in m.outputs}
    for key, name in (
        ("probability_output", m.probability_output),
        ("heatmap.features_output", m.heatmap.features_output),
        ("heatmap.logits_output", m.heatmap.logits_output),
        ("heatmap.map_output", m.heatmap.map_output),
    ):
        if name is not None and name not in outputs:
            raise ManifestError(
                f"{path}: {key}: expected one of the outputs ({', '.join(outputs)}), got {name!r}"
            )
    width = outputs[m.probability_output].shape[-1]
    if width != len(names):
        raise ManifestError(
            f"{path}: classes: output {m.probability_output!r} gives {width} values per case, "
            f"the manifest lists {len(names)} classes"
        )
    _check_heatmap(m, path)
    images = [s for s in m.inputs if s.name in IMAGE_INPUTS]
    if len(images) != 1 or len(images[0].shape) != 4:
        raise ManifestError(
            f"{path}: inputs: expected exactly one image input named "
            f"{' or '.join(map(repr, IMAGE_INPUTS))} of shape [batch, channels, height, width] "
            f"(the AP hip region goes there), got {[[s.name, list(s.shape)] for s in m.inputs]}"
        )
    size = m.preprocessing.size
    if tuple(images[0].shape[2:]) != (size, size):
        raise ManifestError(
            f"{path}: preprocessing.size: {size}, but input {images[0].name!r} is "
            f"{list(images[0].shape)}: the hip region must be resized to the input's edge"
        )
    return m


def valid_display(display: object) -> bool:
    """A class's wording the manifest may carry: it goes into the banner and the SR's
    Series Description (a Long String: no backslash, the value separator)."""
    return (
        isinstance(display, str)
        and 0 < len(display.strip()) <= 64
        and not any(c == "\\" or not c.isprintable() for c in display)
    )


def valid_version(version: str) -> bool:
    """An engine version the manifest may carry: it goes into the SR (a Long String)."""
    return 0 < len(version) <= 64 and not any(c.isspace() or c == "\\" for c in version)


HEATMAP_KINDS = ("gradcam-gem", "gradcam-avg", "interpretive-map", "none")
CODE_SOURCES = ("dicom", "snomed-valueset", "broader", "none")
_CODE = re.compile(r"[0-9]{5,18}")


def _check_heatmap(m: Manifest, path: Path) -> None:
    """The heat map's kind and what it needs, at load: an unknown kind fell back to
    Grad-CAM (or failed the report), a missing output failed every study."""
    spec = m.heatmap
    if spec.kind not in HEATMAP_KINDS:
        raise ManifestError(
            f"{path}: heatmap.kind: expected one of {', '.join(HEATMAP_KINDS)}, got {spec.kind!r}"
        )
    needs: tuple[str, ...] = {
        "gradcam-gem": ("features_output", "head_artefact", "gem_p"),
        "gradcam-avg": ("features_output", "head_artefact"),
        "interpretive-map": ("map_output",),
        "none": (),
    }[spec.kind]
    for key in needs:
        if getattr(spec, key) is None:
            raise ManifestError(f"{path}: heatmap.{key}: required for kind {spec.kind!r}")
    if spec.head_artefact is not None and spec.head_artefact not in m.artefacts:
        raise ManifestError(
            f"{path}: heatmap.head_artefact: expected one of the artefacts "
            f"({', '.join(m.artefacts)}), got {spec.head_artefact!r}"
        )
    gem_p = spec.gem_p
    if gem_p is not None and (
        isinstance(gem_p, bool)
        or not isinstance(gem_p, int | float)
        or not (math.isfinite(gem_p) and gem_p > 0)
    ):
        raise ManifestError(f"{path}: heatmap.gem_p: expected a number > 0, got {gem_p!r}")


def verify_artefacts(manifest: Manifest, folder: Path, keys: tuple[str, ...] = ()) -> None:
    """Check the SHA-256 of the named artefacts (all when ``keys`` is empty)."""
    from engines.export import sha256_of

    for key in keys or tuple(manifest.artefacts):
        path = manifest.artefact_path(folder, key)
        if not path.is_file():
            raise ManifestError(f"{manifest.name}: artefact {key!r} missing at {path}")
        actual = sha256_of(path)
        if actual != manifest.artefacts[key].sha256:
            raise ManifestError(
                f"{manifest.name}: artefact {key!r} at {path} has SHA-256 {actual}, "
                f"manifest says {manifest.artefacts[key].sha256}"
            )


def _boolean(value: Any, key: str, path: Path) -> bool:
    # bool("false") is True: only a YAML true or false is taken.
    if not isinstance(value, bool):
        raise ManifestError(f"{path}: {key}: expected true or false, got {value!r}")
    return value


def _clinical_use(raw: Mapping[str, Any], path: Path) -> str:
    value = raw.get("clinical_use", NOT_FOR_CLINICAL_USE)
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{path}: clinical_use: expected a non-empty statement, got {value!r}")
    return value


def _limits(raw: Any, columns: Sequence[str], path: Path) -> Mapping[str, tuple[float, float]]:
    where = f"{path}: preprocessing.clinical_limits"
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: expected a mapping of column to [low, high], got {raw!r}")
    limits = {}
    for name, pair in raw.items():
        ok = (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in pair
            )
        )
        if name not in columns or not ok or not pair[0] < pair[1]:
            raise ManifestError(
                f"{where}.{name}: expected [low, high] for a column of preprocessing.clinical "
                f"({', '.join(columns) or 'none'}), got {pair!r}"
            )
        limits[str(name)] = (float(pair[0]), float(pair[1]))
    return limits


def _preprocessing(raw: Mapping[str, Any], path: Path) -> Preprocessing:
    values = dict(raw)
    # Each loaded, then failed every study (a negative size, a std of 0, a mean of NaN).
    for key, positive in (("size", True), ("mean", False), ("std", True),
                          ("volume_spacing_mm", True), ("hu_center", False),
                          ("hu_width", True)):  # fmt: skip
        value = values.get(key)
        if value is None and key != "size":
            continue
        whole = key != "size" or (isinstance(value, int) and 1 <= value <= 4096)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or (positive and value <= 0)
            or not whole
        ):
            wanted = (
                "a whole number of pixels from 1 to 4096"
                if key == "size"
                else "a number > 0"
                if positive
                else "a finite number"
            )
            raise ManifestError(f"{path}: preprocessing.{key}: expected {wanted}, got {value!r}")
    volume = values.get("volume")
    if volume is not None and (
        not isinstance(volume, list)
        or len(volume) != 3
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in volume)
    ):
        raise ManifestError(
            f"{path}: preprocessing.volume: expected three whole numbers > 0 (D, H, W), "
            f"got {volume!r}"
        )
    if values.get("volume") is not None:
        values["volume"] = tuple(int(d) for d in values["volume"])
    values["clinical"] = tuple(str(c) for c in values.get("clinical") or ())
    if values.get("clinical_unseen") is not None:
        unseen = values["clinical_unseen"]
        if not isinstance(unseen, list) or any(c not in values["clinical"] for c in unseen):
            raise ManifestError(
                f"{path}: preprocessing.clinical_unseen: expected a list of columns of "
                f"preprocessing.clinical ({', '.join(values['clinical']) or 'none'}), "
                f"got {unseen!r}"
            )
        values["clinical_unseen"] = tuple(str(c) for c in unseen)
    if values.get("clinical_limits") is not None:
        values["clinical_limits"] = _limits(values["clinical_limits"], values["clinical"], path)
    for key, supported in (("canonical_side", CANONICAL_SIDES), ("region", REGIONS)):
        if key in values and values[key] not in supported:
            raise ManifestError(
                f"{path}: preprocessing.{key}: expected {' or '.join(map(repr, supported))} "
                f"(what serving implements), got {values[key]!r}"
            )
    return Preprocessing(**values)


def _tensor(raw: Mapping[str, Any], key: str, path: Path) -> TensorSpec:
    for name in ("name", "shape", "dtype"):
        if name not in _mapping(raw, key, path):
            raise ManifestError(f"{path}: {key}.{name}: required")
    shape = raw["shape"]
    if (
        not isinstance(shape, list)
        or not shape
        or any(isinstance(d, bool) or not isinstance(d, int) for d in shape)
        or any(d < 1 for d in shape[1:])
        or shape[0] != -1
    ):
        # An empty shape failed reading the classes' width with an IndexError. The batch is
        # -1 even for a model whose batch dimension is fixed: the manifest says what the node
        # sends (a pelvis is a batch of 2; the runtime cuts batches to the model's size), and
        # a fixed number there refused every pelvis.
        raise ManifestError(
            f"{path}: {key}.shape: expected a list of whole numbers, the first -1 (the "
            f"batch: any size), got {shape!r}"
        )
    return TensorSpec(str(raw["name"]), tuple(shape), str(raw["dtype"]))


def _mapping(value: Any, key: str, path: Path) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ManifestError(f"{path}: {key}: expected a mapping, got {value!r}")
    return value


def _entry(kind: Any, raw: Any, key: str, path: Path) -> Any:
    """``kind`` (a dataclass) from the mapping ``raw``, its missing and unknown keys named
    (was "malformed entry (Finding.__init__() missing 1 required positional argument...)",
    which did not say which class)."""
    fields = kind.__dataclass_fields__
    where = f"{key} ({raw['name']})" if isinstance(raw, Mapping) and "name" in raw else key
    values = _mapping(raw, where, path)
    unknown = sorted(str(k) for k in values if k not in fields)
    if unknown:
        raise ManifestError(
            f"{path}: {where}.{unknown[0]}: unknown key (known: {', '.join(fields)})"
        )
    required = [
        n for n, f in fields.items()
        if f.default is MISSING and f.default_factory is MISSING
    ]  # fmt: skip
    for name in required:
        if name not in values:
            raise ManifestError(f"{path}: {where}.{name}: required")
    return kind(**values)


def _artefact(key: str, raw: Mapping[str, Any], path: Path) -> Artefact:
    artefact: Artefact = _entry(Artefact, raw, f"artefacts.{key}", path)
    relative = PurePosixPath(str(artefact.path))
    if not artefact.path or relative.is_absolute() or ".." in relative.parts:
        # ../../ ran a file from outside the engine's folder; /etc/passwd was read and hashed.
        raise ManifestError(
            f"{path}: artefacts.{key}.path: expected a path inside the engine's folder, got "
            f"{artefact.path!r}"
        )
    if not (isinstance(artefact.sha256, str) and _SHA256.fullmatch(artefact.sha256)):
        raise ManifestError(
            f"{path}: artefacts.{key}.sha256: expected 64 lower-case hexadecimal digits, got "
            f"{artefact.sha256!r}"
        )
    return artefact


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _plain(value: Any) -> Any:
    """Tuples to lists, so the YAML stays plain (safe_load reads it back)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
