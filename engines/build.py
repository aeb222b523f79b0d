"""Build engines into the cache: train (phantoms or a labelled DICOM folder), evaluate, package.

The demo profile (:mod:`engines.demo_profiles`) trains every engine on phantoms with the
full architectures at a reduced input size and phantom count, so a 2-core CPU builds them
in minutes; a demo engine is reused from the cache while its manifest and artefacts match.
The two image engines (hip_screen, hipnet) train here; the multimodal and the
osteoporosis engine have their own training modules (engines.training.multimodal,
engines.training.osteoporosis) and only train on phantoms.
Layout: ``<cache>/<engine>/manifest.yaml`` with its artefacts beside it, and
``<cache>/<engine>/checkpoints/`` (one per epoch and the best) while it trains: a demo build
removes them once the engine is packaged (its ``model.pt`` is the checkpoint it keeps; the
epoch files would double the cache, ~2 GB for the four engines); ``engines train`` keeps
them for the engineer who runs it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dicom_node.clinical import VECTOR_FIELDS
from dicom_node.errors import DicomNodeError, describe
from engines.catalog import EngineSpec, engine_spec
from engines.demo_profiles import (
    DEMO_ENGINES,
    DEMO_PROFILES,
    DEMO_VERSION,
    IMAGE_ENGINES_SECONDS,
    TEST_SEED,
    TRAIN_INIT,
    TRAIN_SEED,
    VALIDATION_SEED,
    DemoProfile,
    MultimodalProfile,
    OsteoporosisProfile,
    Profile,
    training_budget,
)
from engines.manifest import Manifest, ManifestError, Preprocessing, read_manifest, verify_artefacts
from engines.models import create
from engines.models.hip_multimodal import HipMultimodal
from engines.models.hipnet import HipNet
from engines.models.osteoporosis import OsteoporosisNet
from engines.models.warm_start import backbone_state, warm_start
from engines.package import package_engine
from engines.training.data import HipSet, phantom_set, serving_inputs, split_by_patient
from engines.training.evaluate import Evaluation, evaluate
from engines.training.loop import EpochSummary, Progress, TrainOptions, channels_last, train
from engines.training.multimodal import (
    evaluate_multimodal,
    multimodal_set,
    train_multimodal,
    zero_init_residual,
)
from engines.training.multimodal import evaluation_record as multimodal_record
from engines.training.osteoporosis import (
    evaluate_osteoporosis,
    fit_osteoporosis,
    osteoporosis_set,
    write_importance_plot,
)
from engines.training.osteoporosis import evaluation_record as osteoporosis_record

log = logging.getLogger(__name__)

FP16_SAMPLE_ITEMS = 8  # held-out items the fp16 copy's drift is measured on at packaging


class BuildError(DicomNodeError, RuntimeError):
    """A build cannot go ahead: it would overwrite an engine that is not a demo engine, its
    engine trains on phantoms only, or its spec names a network the trainer cannot train."""


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    folder: Path
    reused: bool
    seconds: float


def engine_folder(cache_dir: Path, name: str) -> Path:
    return cache_dir / name


def cached_demo(cache_dir: Path, name: str) -> Manifest | None:
    """The cached demo engine if its manifest matches this version and its artefacts verify."""
    folder = engine_folder(cache_dir, name)
    try:
        manifest = read_manifest(folder)
        verify_artefacts(manifest, folder)
    except ManifestError as exc:
        if (folder / "manifest.yaml").exists():
            log.warning("%s: cached engine not reusable (%s); rebuilding", name, exc)
        return None
    expected = _profile_record(DEMO_PROFILES[name])
    if manifest.version != DEMO_VERSION or manifest.training.get("profile") != expected:
        log.info("%s: cached engine is from another version or profile; rebuilding", name)
        return None
    if tuple(manifest.classes) != tuple(engine_spec(name).findings):
        # The catalogue's classes, thresholds, high-risk flags and codes are baked into the
        # manifest, and triage reads them there: a changed catalogue needs a new package.
        log.info("%s: cached engine's classes differ from the catalogue's; rebuilding", name)
        return None
    pre = manifest.preprocessing
    if pre.clinical and (pre.clinical_unseen is None or pre.clinical_limits is None):
        # Packaged before the manifest recorded the clinical values training never saw (and
        # before the head stopped dividing by a spread of ~0 for them, sex O), or the range
        # of the numbers it saw (a weight in pounds read as a real one).
        log.info("%s: cached engine predates the record of the clinical values its training "
                 "saw; rebuilding", name)  # fmt: skip
        return None
    return manifest


def build_demo(
    cache_dir: Path,
    names: tuple[str, ...] = DEMO_ENGINES,
    force: bool = False,
    progress: Callable[[str, Progress], None] | None = None,
) -> list[BuildResult]:
    """Train, evaluate and package each demo engine unless a matching one is cached."""
    results = []
    images_start: float | None = None  # when the first image engine of this run started
    # Sources of a warm start build first (hip_screen before hipnet).
    order = {name: i for i, name in enumerate(DEMO_ENGINES)}
    for name in sorted(names, key=lambda n: order.get(n, len(order))):
        start = time.monotonic()
        folder = engine_folder(cache_dir, name)
        if not force:
            _refuse_to_replace_own_engine(folder)
        cached = None if force else cached_demo(cache_dir, name)
        if cached is not None:
            results.append(BuildResult(cached, folder, True, 0.0))
            continue
        profile = DEMO_PROFILES[name]
        max_seconds = None
        if isinstance(profile, Profile):
            if images_start is None:
                images_start = start
            max_seconds = training_budget(profile, IMAGE_ENGINES_SECONDS - (start - images_start))
        manifest = train_demo(
            engine_spec(name),
            profile,
            folder,
            DEMO_VERSION,
            progress=None if progress is None else _named(progress, name),
            max_seconds=max_seconds,
        )
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # packaged: scratch now
        results.append(BuildResult(manifest, folder, False, time.monotonic() - start))
    return results


def _refuse_to_replace_own_engine(folder: Path) -> None:
    """A site's own engine (trained on its data or exported from its checkpoint) is kept."""
    try:
        manifest = read_manifest(folder)
    except ManifestError:
        return
    if not manifest.version.endswith("-demo"):
        raise BuildError(
            f"{folder} holds {manifest.name} {manifest.version}, not a demo engine; "
            "refusing to replace it (use --force, or another engines.cache_dir)"
        )


def train_demo(
    spec: EngineSpec,
    profile: DemoProfile,
    folder: Path,
    version: str,
    progress: Callable[[Progress], None] | None = None,
    max_seconds: float | None = None,
) -> Manifest:
    """Train ``spec`` on phantoms with ``profile`` (its kind picks the training module);
    ``max_seconds`` replaces an image engine's training budget."""
    if isinstance(profile, MultimodalProfile):
        return train_multimodal_on_phantoms(spec, profile, folder, version, progress)
    if isinstance(profile, OsteoporosisProfile):
        return train_osteoporosis_on_phantoms(spec, profile, folder, version, progress)
    return train_on_phantoms(spec, profile, folder, version, progress, max_seconds)


def train_on_phantoms(
    spec: EngineSpec,
    profile: Profile,
    folder: Path,
    version: str,
    progress: Callable[[Progress], None] | None = None,
    max_seconds: float | None = None,
    cache_dir: Path | None = None,
) -> Manifest:
    """Train on phantoms, evaluate on held-out phantoms, package into ``folder``; a given
    ``max_seconds`` replaces the profile's training budget (and is recorded). A warm start
    comes from the engine built in ``cache_dir`` (default: the folder's parent)."""
    source = None
    if profile.warm_start:
        built = folder.parent if cache_dir is None else cache_dir
        source = warm_start_source(spec, built / profile.warm_start)
    torch.manual_seed(profile.options.seed)
    size = profile.size
    train_set = phantom_set(
        spec, profile.train_per_class, size, TRAIN_SEED, lateral_missing=profile.lateral_missing
    )
    validation = phantom_set(spec, profile.validation_per_class, size, VALIDATION_SEED)
    test = phantom_set(spec, profile.test_per_class, size, TEST_SEED)
    training: dict[str, Any] = {"data": "phantoms", "profile": _profile_record(profile)}
    options = profile.options
    if max_seconds is not None and max_seconds != options.max_seconds:
        log.info("%s: %.0f s of training left within the build's deadline", spec.name, max_seconds)
        options = replace(options, max_seconds=max_seconds)
        training["max_seconds"] = round(max_seconds, 1)
    return train_and_package(
        spec,
        train_set,
        validation,
        test,
        size,
        folder,
        version,
        options,
        training,
        progress,
        source=source,
    )


@dataclass(frozen=True)
class WarmStart:
    """A built engine's backbone, to start another engine's matching branches from."""

    engine: str
    version: str
    checkpoint_sha256: str
    backbone: dict[str, torch.Tensor]


def warm_start_source(spec: EngineSpec, folder: Path) -> WarmStart:
    """The verified checkpoint of the engine in ``folder`` (built before ``spec``'s engine)."""
    try:
        manifest = read_manifest(folder)
        verify_artefacts(manifest, folder, ("checkpoint",))
    except ManifestError as exc:
        raise BuildError(
            f"{spec.name} starts from the {folder.name} engine's backbone, which is not built "
            f"in {folder.parent} ({exc}); build it first: "
            f"dicom-node engines build --demo --engine {folder.name}"
        ) from None
    state = torch.load(manifest.artefact_path(folder, "checkpoint"), weights_only=True)
    return WarmStart(
        manifest.name,
        manifest.version,
        manifest.artefacts["checkpoint"].sha256,
        backbone_state(state),
    )


def train_on_data(
    spec: EngineSpec,
    data: HipSet,
    size: int,
    folder: Path,
    version: str,
    options: TrainOptions,
    validation_share: float = 0.2,
    progress: Callable[[Progress], None] | None = None,
    source: str = "",
    patients: Sequence[str] | None = None,
    test_share: float = 0.2,
    source_sha256: str | None = None,
) -> Manifest:
    """Train on a site's labelled images. The validation split picks the best epoch; the
    test split, held out from both, gives the manifest's figures. ``patients`` names each
    item's patient (:class:`~engines.training.dicom_folder.LabelledFolder`): a patient's hips
    stay in one split (default: every item its own patient). ``source`` (the label file)
    and its ``source_sha256`` go into the manifest's ``training``."""
    keys = [str(i) for i in range(len(data))] if patients is None else list(patients)
    train_set, validation, test = split_by_patient(
        data, keys, spec.class_names, validation_share, test_share, options.seed
    )
    name = Path(source).name if source else "labelled DICOM"
    training = {
        "data": source or "labelled DICOM",
        **({"data_sha256": source_sha256} if source_sha256 else {}),
        "items": len(data),
        "patients": len(set(keys)),
        "split": {"train": len(train_set), "validation": len(validation), "test": len(test)},
        "options": asdict(options),
    }
    return train_and_package(
        spec,
        train_set,
        validation,
        test,
        size,
        folder,
        version,
        options,
        training,
        progress,
        clinical_use="site-trained: validate locally before clinical use",
        test_data=f"held-out test split of {name} (used neither to train nor to pick the epoch)",
    )


def train_and_package(
    spec: EngineSpec,
    train_set: HipSet,
    validation: HipSet,
    test: HipSet,
    size: int,
    folder: Path,
    version: str,
    options: TrainOptions,
    training: dict[str, Any],
    progress: Callable[[Progress], None] | None,
    clinical_use: str = "not for clinical use: trained on synthetic phantoms",
    source: WarmStart | None = None,
    test_data: str = "held-out phantoms",
) -> Manifest:
    """Train on ``train_set`` (``validation`` picks the epoch), evaluate on ``test``
    (``test_data`` says what it is, in the manifest), package into ``folder``."""
    image_profile(spec)  # refuses the engines that train on phantoms only
    pre = Preprocessing(size=size)
    model = initial_model(spec, options.seed)
    if source is not None:
        branches = warm_start(model, source.backbone)
        if not branches:
            raise BuildError(f"the {source.engine} backbone fits no branch of {spec.name}")
        log.info("%s: %d branch(es) start from %s", spec.name, len(branches), source.engine)
        training = {
            **training,
            "warm_start": {
                "engine": source.engine,
                "version": source.version,
                "checkpoint_sha256": source.checkpoint_sha256,
                "branches": sorted(branches),
            },
        }
    start = time.monotonic()
    with channels_last(model):
        history = train(
            spec, model, train_set, validation, pre, options, folder / "checkpoints", progress
        )
    train_seconds = time.monotonic() - start
    result = evaluate(spec, model, test, pre, ap_alone=True)
    log.info(
        "%s: test accuracy %.3f on %d items (AP alone %s), pointing game %s",
        spec.name,
        result.accuracy,
        result.items,
        _fmt(result.accuracy_without_lateral),
        _fmt(result.pointing_game),
    )
    training = {**training, "seconds": round(train_seconds, 1), "history": _history(history)}
    return package_engine(
        spec,
        model,
        size,
        folder,
        version,
        training=training,
        evaluation=_evaluation(result, test_data),
        clinical_use=clinical_use,
        samples=serving_inputs(test.subset(_samples(len(test))), pre, isinstance(model, HipNet)),
    )


def phantom_samples(spec: EngineSpec, pre: Preprocessing) -> tuple[torch.Tensor, ...] | None:
    """An image engine's phantoms (one per class), as serving feeds them, for packaging
    weights that come without their test set (``engines export --checkpoint``); None for an
    engine whose other inputs (CT, text, clinical variables) no phantom image gives."""
    if spec.modalities:
        return None
    items = phantom_set(spec, 1, pre.size, TEST_SEED)
    return serving_inputs(items.subset(_samples(len(items))), pre, "LATERAL" in spec.views)


def _samples(items: int) -> torch.Tensor:
    """The held-out items fp16's drift from fp32 is measured on at packaging (the first
    :data:`FP16_SAMPLE_ITEMS` of a test set)."""
    return torch.arange(min(items, FP16_SAMPLE_ITEMS))


def initial_model(spec: EngineSpec, seed: int) -> nn.Module:
    """``spec``'s network before training, its initial weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return create(spec.model, **TRAIN_INIT.get(spec.name, {}))


def image_profile(spec: EngineSpec) -> Profile:
    """The demo profile of an image engine (hip_screen, hipnet). The other engines need
    inputs besides the radiograph (CT, text, clinical variables) and train on phantoms
    only, so they have no labelled-folder training."""
    profile = DEMO_PROFILES.get(spec.name)
    if not isinstance(profile, Profile):
        raise BuildError(
            f"engine {spec.name!r} trains on phantoms only (it needs "
            f"{', '.join(spec.modalities) or 'other inputs'} besides the radiograph); "
            "build its demo with 'dicom-node engines build --demo'"
        )
    return profile


def train_multimodal_on_phantoms(
    spec: EngineSpec,
    profile: MultimodalProfile,
    folder: Path,
    version: str,
    progress: Callable[[Progress], None] | None = None,
) -> Manifest:
    """Phantom studies (radiograph, CT, text) -> train -> held-out evaluation -> package."""
    from engines.text_encoder import TextEncoder

    options = profile.options
    torch.manual_seed(options.seed)
    start = time.monotonic()
    encoder = TextEncoder()
    sets = [
        multimodal_set(spec, per_class, profile.size, profile.volume, seed, encoder)
        for per_class, seed in (
            (profile.train_per_class, TRAIN_SEED),
            (profile.validation_per_class, VALIDATION_SEED),
            (profile.test_per_class, TEST_SEED),
        )
    ]
    train_set, validation, test = sets
    data_seconds = time.monotonic() - start
    model = create(spec.model)
    if not isinstance(model, HipMultimodal):
        raise BuildError(
            f"engine {spec.name!r}: model {spec.model!r} is not the multimodal network"
        )
    zero_init_residual(model)
    start = time.monotonic()
    history = train_multimodal(
        spec, model, train_set, validation, options, folder / "checkpoints", progress
    )
    train_seconds = time.monotonic() - start
    result = evaluate_multimodal(spec, model, test)
    log.info(
        "%s: test accuracy %.3f on %d items (without CT %.3f, without text %.3f)",
        spec.name,
        result.accuracy,
        result.items,
        result.accuracy_without_ct,
        result.accuracy_without_text,
    )
    training = _phantom_record(profile, data_seconds, train_seconds, history=_history(history))
    held_out = test.subset(_samples(len(test)))
    return package_engine(
        spec,
        model,
        profile.size,
        folder,
        version,
        training=training,
        evaluation=multimodal_record(result),
        volume=profile.volume,
        samples=(held_out.radiograph, held_out.ct, held_out.text, held_out.present),
    )


def train_osteoporosis_on_phantoms(
    spec: EngineSpec,
    profile: OsteoporosisProfile,
    folder: Path,
    version: str,
    progress: Callable[[Progress], None] | None = None,
) -> Manifest:
    """Phantom patients (radiograph, clinical variables) -> backbones, reduction, head ->
    held-out evaluation and permutation importance (plotted) -> package."""
    options = profile.options
    torch.manual_seed(options.seed)
    start = time.monotonic()
    train_set = osteoporosis_set(spec, profile.train_per_class, profile.size, TRAIN_SEED)
    validation = osteoporosis_set(spec, profile.validation_per_class, profile.size, VALIDATION_SEED)
    test = osteoporosis_set(spec, profile.test_per_class, profile.size, TEST_SEED)
    data_seconds = time.monotonic() - start
    kwargs = {"clinical_width": len(VECTOR_FIELDS), "components": options.clusters}
    try:
        model = create(spec.model, **kwargs)
    except TypeError as exc:  # another network: it takes no clinical_width or components
        raise BuildError(
            f"engine {spec.name!r}: model {spec.model!r} is not the osteoporosis network "
            f"({describe(exc)})"
        ) from exc
    if not isinstance(model, OsteoporosisNet):
        raise BuildError(
            f"engine {spec.name!r}: model {spec.model!r} is not the osteoporosis network"
        )
    start = time.monotonic()
    record = fit_osteoporosis(model, train_set, validation, options, progress)
    train_seconds = time.monotonic() - start
    result = evaluate_osteoporosis(
        spec, model, test, repeats=options.importance_repeats, seed=options.seed
    )
    log.info(
        "%s: test accuracy %.3f, ROC AUC %.3f on %d items; most important input %s",
        spec.name,
        result.accuracy,
        result.roc_auc,
        result.items,
        result.importance[0].name,
    )
    folder.mkdir(parents=True, exist_ok=True)
    plot = write_importance_plot(result.importance, folder)
    training = _phantom_record(profile, data_seconds, train_seconds, **record)
    held_out = test.subset(_samples(len(test)))
    return package_engine(
        spec,
        model,
        profile.size,
        folder,
        version,
        model_kwargs=kwargs,
        training=training,
        evaluation=osteoporosis_record(result),
        clinical=VECTOR_FIELDS,
        extras={"importance_plot": plot},
        samples=(held_out.image, held_out.clinical, held_out.missing),
    )


def _named(progress: Callable[[str, Progress], None], name: str) -> Callable[[Progress], None]:
    return lambda p: progress(name, p)


def _phantom_record(
    profile: DemoProfile, data_seconds: float, train_seconds: float, **more: Any
) -> dict[str, Any]:
    """The manifest's training record of a phantom-trained fusion engine."""
    return {
        "data": "phantoms",
        "profile": _profile_record(profile),
        "data_seconds": round(data_seconds, 1),
        "seconds": round(train_seconds, 1),
        **more,
    }


def _profile_record(profile: DemoProfile) -> dict[str, Any]:
    # Through YAML and back, tuples come back as lists: record them as lists.
    record: dict[str, Any] = _plain(asdict(profile))
    return record


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _history(history: list[EpochSummary]) -> list[dict[str, float]]:
    return [
        {
            "epoch": h.epoch,
            "loss": round(h.train_loss, 5),
            "validation_accuracy": round(h.val_accuracy, 4),
            "seconds": round(h.seconds, 1),
        }
        for h in history
    ]


def _evaluation(result: Evaluation, data: str) -> dict[str, Any]:
    alone = result.accuracy_without_lateral
    return {
        "data": data,
        "items": result.items,
        "accuracy": round(result.accuracy, 4),
        **({} if alone is None else {"accuracy_without_lateral": round(alone, 4)}),
        "pointing_game": None if result.pointing_game is None else round(result.pointing_game, 4),
        "positives": result.positives,
        "recall": {k: round(v, 4) for k, v in result.recall.items()},
        "confusion": result.confusion,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
