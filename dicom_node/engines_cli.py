"""``dicom-node engines ...``: build, train, export, list and Triton repositories (prints)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.config import Config
from dicom_node.config_results import RoutingConfig
from dicom_node.errors import DicomNodeError, describe
from dicom_node.logs import one_line

if TYPE_CHECKING:
    from engines.catalog import EngineSpec
    from engines.manifest import Manifest

ENGINE_NAMES = ("hip_screen", "hipnet", "hip_multimodal", "osteoporosis")
# Input edges an engine may be trained or exported at (the phantoms' range, tested equal to
# engines.phantoms.phantom's; kept here so the CLI parses without importing torch).
MIN_SIZE, MAX_SIZE = 64, 4096
# Artefacts made by training rather than by packaging, kept when re-exporting.
EXTRAS = ("importance_plot",)


class ProgressBar:
    """One self-overwriting line per engine on stderr: epoch, step, loss, elapsed time."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, name: str, p: Any) -> None:
        now = time.monotonic()
        final = p.step == p.steps
        if not self.tty and not final and now - self._last < 10:
            return  # a log file gets a line every 10 s and at each epoch's end
        self._last = now
        done = ((p.epoch - 1) * p.steps + p.step) / (p.epochs * p.steps)
        filled = int(done * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        line = (
            f"{name:<10} [{bar}] {done:4.0%} epoch {p.epoch}/{p.epochs} "
            f"step {p.step}/{p.steps} loss {p.loss:.4f} {p.elapsed:5.0f}s"
        )
        end = "\n" if (final or not self.tty) else ""
        print(f"\r{line}" if self.tty else line, end=end, file=sys.stderr, flush=True)


def run_engines(cfg: Config, args: argparse.Namespace) -> int:
    cache = cfg.engines.cache_dir
    if args.verb == "build":
        return _build(cache, tuple(args.engine or ENGINE_NAMES), args.force)
    if args.verb == "train":
        return _train(cache, args, cfg.routing)
    if args.verb == "export":
        return _export(cache, args)
    if args.verb == "list":
        return _list(cfg)
    if args.verb == "triton-repo":
        return _triton_repo(cache, args)
    return 2  # pragma: no cover - argparse requires a verb


def pixels(text: str) -> int:
    """``--size``: an input edge from MIN_SIZE to MAX_SIZE pixels."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"expected {MIN_SIZE}-{MAX_SIZE} pixels, got {value}")
    return value


def at_least(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``least`` (and at most ``most``), refused
    under its flag's name (a check further in named the option's field: "per_class" for
    --phantoms)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected at least {least}, got {value}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"expected at most {most}, got {value}")
        return value

    return parse


def engine_version(text: str) -> str:
    """An argparse type: a version the manifest will take (checked before a training run
    that would write a manifest the node then refuses)."""
    from engines.manifest import valid_version

    if not valid_version(text):
        raise argparse.ArgumentTypeError(
            f"expected up to 64 characters without spaces or backslashes, got {text!r}"
        )
    return text


def positive(text: str) -> float:
    """An argparse type: a finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _build(cache: Path, names: tuple[str, ...], force: bool) -> int:
    from engines.build import build_demo
    from engines.demo_profiles import ACCURACY_TARGETS

    print(f"building demo engines in {cache} (trained on synthetic phantoms; not for clinical use)")
    start = time.monotonic()
    for result in build_demo(cache, names, force=force, progress=ProgressBar()):
        m = result.manifest
        how = "cached" if result.reused else f"built in {result.seconds:.0f} s"
        print(f"{m.name} {m.version}: {how}; {_figures(m.evaluation)}")
        accuracy, target = m.evaluation.get("accuracy"), ACCURACY_TARGETS.get(m.name)
        if isinstance(accuracy, float) and target is not None and accuracy < target:
            # Built on a busy or slow host: cached and reused, it went unremarked.
            print(
                f"warning: {m.name} held-out accuracy {accuracy:.3f} is below the demo target "
                f"{target:.2f}: its training stops at a time budget, and this host was slow or "
                f"busy (docs/engines.md); rebuild it on an idle machine with `dicom-node engines "
                f"build --demo --force --engine {m.name}`",
                file=sys.stderr,
            )
    print(f"done in {time.monotonic() - start:.0f} s")
    return 0


def _train(cache: Path, args: argparse.Namespace, routing: RoutingConfig) -> int:
    from engines.build import image_profile, train_on_data, train_on_phantoms
    from engines.catalog import engine_spec
    from engines.export import sha256_of
    from engines.training.dicom_folder import load_labelled_folder
    from engines.training.loop import TrainOptions

    spec = engine_spec(args.name)
    demo = image_profile(spec)  # refuses the engines that train on phantoms only
    size = spec.demo_size if args.size is None else args.size
    options = TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        beta=args.beta,
        gamma=args.gamma,
        seed=args.seed,
        attention_weight=args.attention_weight,
        batch_norm_items=args.batch_norm_items,
    )
    options.check()  # before minutes of reading a folder's images
    folder = Path(args.out).resolve() if args.out else cache / spec.name
    _refuse_same_version(folder, spec.name, args.version)
    bar = ProgressBar()
    if args.data:
        labelled = load_labelled_folder(spec, Path(args.data), size, routing)
        present = labelled.hips.lateral_present
        laterals = "" if present is None else f" ({int(present.sum())} with a lateral)"
        print(
            f"{spec.name}: {len(labelled.hips)} labelled hips{laterals} of "
            f"{len(set(labelled.patients))} patients from {args.data}, input {size} px"
        )
        manifest = train_on_data(
            spec,
            labelled.hips,
            size,
            folder,
            args.version,
            options,
            progress=lambda p: bar(spec.name, p),
            # Where it was, and which version of it: "data/labels.csv" names nothing later.
            source=str(Path(args.data).resolve()),
            source_sha256=sha256_of(Path(args.data)),
            patients=labelled.patients,
        )
        parts = manifest.training["split"]
        print(
            f"split by patient: {parts['train']} hips to train, {parts['validation']} to pick the "
            f"epoch, {parts['test']} held out for the figures"
        )
    else:
        profile = replace(demo, size=size, train_per_class=args.phantoms, options=options)
        manifest = train_on_phantoms(
            spec,
            profile,
            folder,
            args.version,
            progress=lambda p: bar(spec.name, p),
            cache_dir=cache,  # a warm start's source is built there, whatever --out says
        )
    for epoch in manifest.training.get("history", []):
        print(
            f"epoch {epoch['epoch']}: loss {epoch['loss']:.4f}, "
            f"validation accuracy {epoch['validation_accuracy']:.3f}"
        )
    print(f"{manifest.name} {manifest.version}: {_figures(manifest.evaluation)}")
    for name, value in manifest.evaluation.get("recall", {}).items():
        print(f"  recall {name:<32} {value:.3f}")
    print(f"checkpoints in {folder / 'checkpoints'}; engine packaged in {folder}")
    return 0


def _refuse_same_version(folder: Path, name: str, version: str) -> None:
    """New weights under the version of the engine they replace would make two models'
    results name the same one (every ``engines train`` without --version wrote 1.0.0);
    another engine's folder would be overwritten with an engine the node refuses there."""
    from engines.manifest import MANIFEST_NAME, ManifestError, read_manifest

    if not (folder / MANIFEST_NAME).exists():
        return
    try:
        old = read_manifest(folder)
    except ManifestError:
        return  # a broken engine: nothing whose version results carry
    if old.name != name:  # packaged over it after minutes of training; the node refuses it
        raise DicomNodeError(
            f"engines train: {folder} holds engine {old.name}, not {name}; give --out an "
            f"empty folder or {name}'s own"
        )
    if old.version == version:
        raise DicomNodeError(
            f"engines train: {folder} already holds {name} {version}; give another --version "
            f"for the new weights (the results name the version: two models must not share one)"
        )


def _export(cache: Path, args: argparse.Namespace) -> int:

    from engines.build import engine_folder, phantom_samples
    from engines.catalog import engine_spec
    from engines.manifest import MANIFEST_NAME, read_manifest, verify_artefacts
    from engines.models import create
    from engines.package import CHECKPOINT, package_engine

    spec = engine_spec(args.name)
    folder = engine_folder(cache, args.name)
    size: int | None = args.size
    if args.checkpoint and not args.version:
        raise DicomNodeError("engines export --checkpoint: give --version for the new weights")
    if not (folder / MANIFEST_NAME).exists():
        return _export_new(spec, folder, args, size)
    old = read_manifest(folder)
    print(f"{spec.name}: {_taken_from(old, size is None)} from {folder / MANIFEST_NAME}")
    if size is None:
        size = old.preprocessing.size
    if size != old.preprocessing.size and not args.version:
        # Another input size is another engine: its results must not carry the old version.
        raise DicomNodeError(
            f"engines export --size {size}: the input changes from {old.preprocessing.size} "
            f"px; give --version for the re-sized engine"
        )
    if (args.checkpoint or size != old.preprocessing.size) and args.version == old.version:
        raise DicomNodeError(
            f"engines export: {folder} already holds {spec.name} {old.version}; give another "
            "--version for the new weights or input size (the results name the version: two "
            "models must not share one)"
        )
    model = create(old.model, **old.model_kwargs)
    if not args.checkpoint:
        # The engine's own weights are repackaged with its figures and fresh hashes: they
        # must be the ones those figures were measured on.
        verify_artefacts(old, folder, ("checkpoint",))
    checkpoint = Path(args.checkpoint) if args.checkpoint else folder / CHECKPOINT
    _load_weights(model, checkpoint, old.model)
    # Figures measured on other weights, or at another input size, would be false: drop them
    # (and the importance plot, which describes them).
    same = not args.checkpoint and size == old.preprocessing.size
    training = old.training if not args.checkpoint else _checkpoint_record(checkpoint)
    manifest = package_engine(
        spec,
        model,
        size,
        folder,
        args.version or old.version,
        model_kwargs=old.model_kwargs,
        training=training,
        evaluation=old.evaluation if same else {},
        clinical_use=old.clinical_use
        if not args.checkpoint
        else "external checkpoint: validate locally before clinical use",
        volume=old.preprocessing.volume,
        clinical=old.preprocessing.clinical,
        extras={k: a.path for k, a in old.artefacts.items() if k in EXTRAS} if same else {},
        samples=phantom_samples(spec, replace(old.preprocessing, size=size)),
        classes=old.classes,
        preprocessing=old.preprocessing,
    )
    for key, artefact in manifest.artefacts.items():
        print(f"{key:<10} {folder / artefact.path}  sha256 {artefact.sha256}")
    return 0


def _load_weights(model: Any, checkpoint: Path, network: str) -> None:
    """``checkpoint``'s state dict into ``model``; one line naming the file if it is missing,
    not a torch checkpoint, or the weights of another network (with the keys that differ).
    The usual wrappers are taken off: ``{"state_dict": ...}`` or ``{"model": ...}`` (what
    training frameworks save) and the ``module.`` prefix of a DataParallel model."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (unpickling, zip, a text file)
        why = one_line(describe(exc).splitlines()[0])
        why = why if len(why) <= 200 else why[:200] + "…"
        raise DicomNodeError(
            f"--checkpoint {checkpoint}: cannot read it as torch weights ({why})"
        ) from exc
    state = _unwrapped(state)
    if not isinstance(state, dict):
        raise DicomNodeError(
            f"--checkpoint {checkpoint}: expected a state dict of {network!r} weights, got "
            f"a {type(state).__name__}"
        )
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise DicomNodeError(
            f"--checkpoint {checkpoint}: not {network!r} weights: {len(missing)} of its "
            f"{len(expected)} tensors missing ({_first(missing)}), {len(unexpected)} "
            f"unexpected ({_first(unexpected)})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # the same names, other shapes (another width or class count)
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise DicomNodeError(
            f"--checkpoint {checkpoint}: not {network!r} weights of this configuration "
            f"({len(lines)} tensors of another shape; first: {lines[0] if lines else exc})"
        ) from exc


def _checkpoint_record(checkpoint: Path) -> dict[str, str]:
    """The manifest's ``training`` of packaged weights: which file (resolved), which bytes."""
    from engines.export import sha256_of

    return {
        "data": f"checkpoint {checkpoint.resolve()}",
        "checkpoint_sha256": sha256_of(checkpoint),
    }


def _unwrapped(state: Any) -> Any:
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):  # in a state dict it would be a tensor
                state = state[key]
                break
        if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _first(names: list[str], shown: int = 3) -> str:
    if not names:
        return "none"
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _export_new(spec: EngineSpec, folder: Path, args: argparse.Namespace, size: int | None) -> int:
    """Package a checkpoint where no engine was built: an image engine, at ``--size``."""

    from engines.build import phantom_samples
    from engines.manifest import Preprocessing
    from engines.models import create
    from engines.package import package_engine

    if not args.checkpoint:
        raise DicomNodeError(
            f"engines export {spec.name}: no engine in {folder} to re-export; "
            "give --checkpoint FILE, --version V and --size PX"
        )
    if size is None:
        raise DicomNodeError(
            f"engines export {spec.name} --checkpoint: no engine in {folder} to take the "
            "input size from; give --size PX"
        )
    if spec.modalities:
        raise DicomNodeError(
            f"engines export {spec.name} --checkpoint: no engine in {folder}; the "
            f"{', '.join(spec.modalities)} input settings and model arguments come from its "
            f"manifest: build it first (dicom-node engines build --demo --engine {spec.name})"
        )
    print(f"{spec.name}: input {size} px (--size), no existing engine in {folder}")
    model = create(spec.model)
    checkpoint = Path(args.checkpoint)
    _load_weights(model, checkpoint, spec.model)
    manifest = package_engine(
        spec,
        model,
        size,
        folder,
        args.version,
        training=_checkpoint_record(checkpoint),
        clinical_use="external checkpoint: validate locally before clinical use",
        samples=phantom_samples(spec, Preprocessing(size=size)),
    )
    for key, artefact in manifest.artefacts.items():
        print(f"{key:<10} {folder / artefact.path}  sha256 {artefact.sha256}")
    return 0


def _taken_from(old: Manifest, size_too: bool) -> str:
    """What an export keeps of the engine's manifest: its classes (thresholds, codes and
    wording a site may have edited), the preprocessing it packages again (input size
    unless --size, normalisation, CT grid and window, clinical columns) and the model's
    arguments."""
    pre = old.preprocessing
    kept = ["classes with their thresholds, codes and wording"]
    if size_too:
        kept.append(f"input {pre.size} px (--size PX for another)")
    kept.append(f"normalisation mean {pre.mean:g} / std {pre.std:g}")
    if pre.volume:
        kept.append(
            f"CT grid {'x'.join(str(d) for d in pre.volume)} at {pre.volume_spacing_mm:g} mm, "
            f"HU window centre {pre.hu_center:g} width {pre.hu_width:g}"
        )
    if pre.clinical:
        kept.append(f"clinical columns {', '.join(pre.clinical)}")
    kept.append(f"model arguments {old.model_kwargs or 'none'}")
    return ", ".join(kept)


def _list(cfg: Config) -> int:
    from engines.build import engine_folder
    from engines.manifest import ManifestError, read_manifest
    from engines.runtimes import needed_artefacts, resolve_backend

    backend = resolve_backend(cfg.engines.backend)
    width = max(len(n) for n in ENGINE_NAMES) + 1
    header = f"{'ENGINE':<{width}} {'VERSION':<12} {'BACKEND':<12} {'INPUT':>5}"
    print(f"{header}  FIGURES (held-out data)")
    count = 0
    for name in ENGINE_NAMES:
        folder = engine_folder(cfg.engines.cache_dir, name)
        empty = f"{name:<{width}} {'-':<12} {backend:<12} {'-':>5}"
        if not (folder / "manifest.yaml").exists():
            print(f"{empty}  not built")
            continue
        try:
            m = read_manifest(folder)
        except ManifestError as exc:  # was "not built": the site's edit, not the build
            print(f"{empty}  BROKEN: {exc}")
            continue
        if m.name != name:  # the node refuses it (EngineSet): was listed as the other engine
            print(f"{empty}  BROKEN: its manifest names engine {m.name!r}")
            continue
        # Present, not hashed (gigabytes each listing): the node checks each hash on opening.
        # Only what the node opens on this backend is needed (a site may delete model.pt).
        needed = needed_artefacts(m, backend, cfg.engines.precision)
        gone = [k for k, a in m.artefacts.items() if not (folder / a.path).is_file()]
        missing = [f"{k} ({m.artefacts[k].path})" for k in gone if k not in needed]
        broken = [f"{k} ({m.artefacts[k].path})" for k in gone if k in needed]
        broken += [f"{key} (not in its manifest)" for key in needed if key not in m.artefacts]
        if broken:  # was listed as built, then refused by the node
            print(f"{empty}  BROKEN: artefact missing: {', '.join(broken)}")
            continue
        count += 1
        absent = f"; absent, not needed on {backend}: {', '.join(missing)}" if missing else ""
        print(
            f"{name:<{width}} {m.version:<12} {backend:<12} {m.preprocessing.size:>5}  "
            f"{_figures(m.evaluation)}{absent}"
        )
    print(f"{count} engines built in {cfg.engines.cache_dir}")
    return 0


def _triton_repo(cache: Path, args: argparse.Namespace) -> int:
    from engines.build import engine_folder
    from engines.triton_repo import write_triton_repo

    built = [
        engine_folder(cache, n)
        for n in ENGINE_NAMES
        if (engine_folder(cache, n) / "manifest.yaml").exists()
    ]
    if not built:
        raise DicomNodeError(f"no built engine in {cache}: run 'dicom-node engines build --demo'")
    written = write_triton_repo(
        built, Path(args.out), platform=args.platform, max_batch_size=args.max_batch_size,
        instance_kind=args.instance_kind,
    )  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    return 0


def _figure(value: Any) -> str:
    """A recorded figure to three decimals; a site's manifest may hold anything there (a
    string crashed the listing)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.3f}"
    return "n/a" if value is None else repr(value)


def _figures(evaluation: Any) -> str:
    """The held-out figures an engine's manifest records (each engine has its own)."""
    if not isinstance(evaluation, dict) or "accuracy" not in evaluation:
        return "not evaluated"
    figures = [f"accuracy {_figure(evaluation['accuracy'])} on {evaluation.get('items')} items"]
    if "roc_auc" in evaluation:
        figures.append(f"ROC AUC {_figure(evaluation['roc_auc'])}")
    for key, words in (
        ("accuracy_without_ct", "without CT"),
        ("accuracy_without_text", "without text"),
        ("accuracy_without_lateral", "AP alone"),
    ):
        if isinstance(evaluation.get(key), float | int):
            figures.append(f"{words} {evaluation[key]:.3f}")
    importance = evaluation.get("importance")
    if isinstance(importance, list) and importance and isinstance(importance[0], dict):
        figures.append(f"most important input {importance[0].get('name')}")
    if "roc_auc" not in evaluation and "accuracy_without_ct" not in evaluation:
        figures.append(f"heat-map peak in lesion {_figure(evaluation.get('pointing_game'))}")
    return ", ".join(figures)
