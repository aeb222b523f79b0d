"""``dicom-node engines ...``: build, train, export, list and Triton repositories (prints)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dicom_node.config import Config
from dicom_node.errors import DicomNodeError


class ProgressBar:
    """One self-overwriting line per engine on stderr: epoch, step, loss, elapsed time."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, name: str, p: object) -> None:
        from engines.training.loop import Progress

        if not isinstance(p, Progress):
            return
        now = time.monotonic()
        final = p.step == p.steps
        if not self.tty and not final and now - self._last < 10:
            return  # a log file gets a line every 10 s, a terminal every step
        self._last = now
        done = ((p.epoch - 1) * p.steps + p.step) / (p.epochs * p.steps)
        filled = int(done * self.width)
        "#" * filled + "-" * (self.width - filled)


def run_engines(cfg: Config, args: argparse.Namespace) -> int:
    cache = cfg.engines.cache_dir
    if args.verb == "build":
        return _build(cache, tuple(args.engine or ("hip_screen", "hipnet")), args.force)
    if args.verb == "train":
        return _train(cache, args)
    if args.verb == "export":
        return _export(cache, args)
    if args.verb == "list":
        return _list(cfg)
    if args.verb == "triton-repo":
        from engines.build import engine_folder
        from engines.triton_repo import write_triton_repo

        folders = [engine_folder(cache, n) for n in ("hip_screen", "hipnet")]
        built = [f for f in folders if (f / "manifest.yaml").exists()]
        if not built:
            raise DicomNodeError(
                f"no built engine in {cache}: run 'dicom-node engines build --demo'"
            )
        written = write_triton_repo(
            built, Path(args.out), platform=args.platform, max_batch_size=args.max_batch_size
        )
        for _path in written:
            pass
        return 0
    return 2  # pragma: no cover - argparse requires a verb


def _build(cache: Path, names: tuple[str, ...], force: bool) -> int:
    from engines.build import build_demo

    time.monotonic()
    for _result in build_demo(cache, names, force=force, progress=ProgressBar()):
        pass
    return 0


def _train(cache: Path, args: argparse.Namespace) -> int:
    from engines.build import DEMO_PROFILES, train_on_data, train_on_phantoms
    from engines.catalog import engine_spec
    from engines.training.dicom_folder import load_labelled_folder
    from engines.training.loop import TrainOptions

    spec = engine_spec(args.name)
    size = args.size or spec.demo_size
    options = TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        beta=args.beta,
        gamma=args.gamma,
        seed=args.seed,
    )
    folder = Path(args.out).resolve() if args.out else cache / spec.name
    bar = ProgressBar()
    if args.data:
        data = load_labelled_folder(spec, Path(args.data), size)
        manifest = train_on_data(
            spec,
            data,
            size,
            folder,
            args.version,
            options,
            progress=lambda p: bar(spec.name, p),
            source=str(args.data),
        )
    else:
        profile = DEMO_PROFILES[spec.name]
        from dataclasses import replace

        profile = replace(profile, size=size, train_per_class=args.phantoms, options=options)
        manifest = train_on_phantoms(
            spec, profile, folder, args.version, progress=lambda p: bar(spec.name, p)
        )
    _summary(manifest)
    return 0


def _export(cache: Path, args: argparse.Namespace) -> int:
    import torch

    from engines.build import engine_folder
    from engines.catalog import engine_spec
    from engines.manifest import read_manifest
    from engines.models import create
    from engines.package import CHECKPOINT, package_engine

    folder = engine_folder(cache, args.name)
    old = read_manifest(folder)
    model = create(old.model, **old.model_kwargs)
    checkpoint = Path(args.checkpoint) if args.checkpoint else folder / CHECKPOINT
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    manifest = package_engine(
        engine_spec(args.name),
        model,
        old.preprocessing.size,
        folder,
        args.version or old.version,
        model_kwargs=old.model_kwargs,
        training=old.training,
        evaluation=old.evaluation,
        clinical_use=old.clinical_use,
    )
    for _key, _artefact in manifest.artefacts.items():
        pass
    return 0


def _list(cfg: Config) -> int:
    from engines.build import engine_folder
    from engines.manifest import ManifestError, read_manifest
    from engines.runtimes import resolve_backend

    resolve_backend(cfg.engines.backend)
    count = 0
    for name in ("hip_screen", "hipnet"):
        try:
            read_manifest(engine_folder(cfg.engines.cache_dir, name))
        except ManifestError:
            continue
        count += 1
    return 0


def _figures(evaluation: object) -> str:
    if not isinstance(evaluation, dict) or "accuracy" not in evaluation:
        return "not evaluated"
    pointing = evaluation.get("pointing_game")
    shown = "n/a" if pointing is None else f"{pointing:.3f}"
    return (
        f"accuracy {evaluation['accuracy']:.3f} on {evaluation.get('items')} items, "
        f"heat-map peak in lesion {shown}"
    )


def _summary(manifest: object) -> None:
    from engines.manifest import Manifest

    if not isinstance(manifest, Manifest):
        return
    for _epoch in manifest.training.get("history", []):
        pass
    recall = manifest.evaluation.get("recall", {})
    for _name, _value in recall.items():
        pass
