"""A study's analysis to the objects sent back: one SR and the heat-map Secondary Captures.

Which overlays are made follows ``results.heatmaps``: one per source AP image
and engine, showing each hip's first reported finding (of its positive findings, an
urgent one, the most probable first) and, with ``positive-or-top``, the most probable class
of hips with none. Lateral views get no overlay: the engines' maps are on the
AP grid. An engine without heat maps (osteoporosis) gets none.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from dicom_node.analyse import HipOutcome, StudyAnalysis
from dicom_node.config import Config
from dicom_node.infer import EngineSet
from dicom_node.report import build_overlay_sc, build_sr, sc_identity, sr_identity
from dicom_node.report.codes import HEATMAP_METHODS
from dicom_node.report.patient import disagreements, stored_text
from dicom_node.report.sc import OverlayHip, overlay_series
from dicom_node.report.sr import as_latest_report, reported_findings
from dicom_node.report.uids import SC_CONTENT, content_uid, with_content_uid, with_uid
from dicom_node.triage import probability_text, shown_probability
from engines.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ResultSet:
    sr: Dataset
    overlays: tuple[Dataset, ...]

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        return (self.sr, *self.overlays)


def _overlay_hip(hip: HipOutcome, policy: str, manifest: Manifest) -> OverlayHip | None:
    decision = hip.decision
    positives = decision.positives
    if not positives and policy != "positive-or-top":
        return None
    finding = reported_findings(decision)[0]
    if finding.name not in decision.prediction.heatmaps:
        return None
    return OverlayHip(
        region=hip.ap.region,
        geometry=hip.ap.geometry,
        heatmap=decision.prediction.heatmaps[finding.name],
        finding=manifest.display(finding.name),
        probability=probability_text(finding),
        present=finding.present,
        priority=decision.priority,
        normal=finding.normal,
    )


def build_results(
    analysis: StudyAnalysis,
    engines: EngineSet,
    cfg: Config,
    previous: Sequence[Dataset] = (),
    device: str | None = None,
) -> ResultSet:
    """The study's SR and overlays; ``previous`` are the headers of the SRs and overlays
    earlier jobs of the study wrote: a new SR supersedes theirs
    (:func:`~dicom_node.report.sr.as_latest_report`), a new overlay is numbered after those
    in its series (:func:`_number_after`); ``device`` the installation's Device Observer UID
    (:meth:`State.device_uid`)."""
    used = sorted({m for m in (h.decision.prediction.task.engine for h in analysis.hips)})
    # Asked of the engine set by name: engines a stop closed under this job raise
    # EngineUnavailableError (the job stays pending); a snapshot of the open ones came out
    # empty and failed the job for good with a KeyError.
    manifests = {name: engines.manifest(name) for name in used}
    backends = {name: engines.backend(name) for name in used}
    images = {i.source.sop_instance_uid: i for i in analysis.cache.images()}
    headers = {uid: image.header for uid, image in images.items()}
    # The CT series an engine fused is evidence too (its headers only; never decoded here).
    headers.update(_ct_headers(analysis))
    study = _study_header(analysis, headers)
    headers[str(study.SOPInstanceUID)] = study  # the SR takes its patient from the header itself
    identity = sr_identity(
        analysis.study_uid,
        [(name, manifests[name].version) for name in used],
        sorted(headers),
        cfg.results.sr_series_number,
    )
    sr = build_sr(
        analysis.decisions, manifests, backends, headers, analysis.priority, identity,
        cfg.results.institution_name, analysis.not_analysed, study, device,
        analysis.held_back,
    )  # fmt: skip
    as_latest_report(sr, [p for p in previous if str(p.SOPClassUID) == str(sr.SOPClassUID)])
    overlays: list[Dataset] = []
    if cfg.results.heatmaps != "none":
        groups: dict[tuple[str, str], list[OverlayHip]] = {}
        for hip in analysis.hips:
            engine = hip.decision.prediction.task.engine
            overlay = _overlay_hip(hip, cfg.results.heatmaps, manifests[engine])
            if overlay is not None:
                key = (engine, hip.ap.image.source.sop_instance_uid)
                groups.setdefault(key, []).append(overlay)
        numbers: Counter[tuple[str, str, str]] = Counter()
        for (engine, uid), hips in groups.items():
            manifest = manifests[engine]
            image = images[uid]
            # Numbered within each overlay series, from 1 (was across all of them: a
            # series whose only image was numbered 2).
            series = overlay_series(image.header, engine)
            numbers[series] += 1
            sc = build_overlay_sc(
                image.header,
                image.picture,
                sorted(hips, key=lambda h: h.region.side != "R"),
                engine,
                manifest.version,
                manifest.clinical_use,
                sc_identity(
                    analysis.study_uid,
                    (engine, manifest.version),
                    uid,
                    cfg.results.sc_series_number,
                    numbers[series],
                ),
                method=HEATMAP_METHODS[manifest.heatmap.kind],
                max_edge=cfg.results.max_overlay_edge,
                institution_name=cfg.results.institution_name,
                map_branch=_map_branch(manifest),
                study=study,
            )
            overlays.append(with_content_uid(sc, "sc", SC_CONTENT))
        earlier = [p for p in previous if p.SOPClassUID == SecondaryCaptureImageStorage]
        _number_after(overlays, earlier)
    return ResultSet(sr, tuple(overlays))


def _number_after(overlays: Sequence[Dataset], earlier: Sequence[Dataset]) -> None:
    """Each overlay's Instance Number after the earlier jobs' overlays in its series: a
    rerun whose overlay differs put it beside the one it replaces, both numbered 1 (a viewer
    could not tell the latest). One rebuilt as the latest of its image there (its UID comes
    from its content: a crash, a rerun finding the same) keeps its number; one whose content
    returns to an older, superseded overlay's is a new object (its UID also names the latest
    it replaces), as an SR is: under the older UID, numbered below the latest, a viewer took
    the superseded one for current."""
    of_image: dict[tuple[str, str], list[Dataset]] = {}
    for p in sorted(earlier, key=lambda p: int(p.get("InstanceNumber") or 0)):
        of_image.setdefault((str(p.SeriesInstanceUID), _source_of(p)), []).append(p)
    known = {str(p.SOPInstanceUID) for p in earlier}
    kept: set[str] = set()
    for sc in overlays:
        before = of_image.get((str(sc.SeriesInstanceUID), _source_of(sc)), [])
        if not before:
            continue
        uid = str(sc.SOPInstanceUID)
        # The latest: the one of the highest number. Several share it where overlays were
        # delivered before reruns were numbered (each 1): then none is known to be current,
        # and content equal to one of them is a new object after them all (by file order
        # one was taken for the latest, and a superseded overlay stayed looking current).
        top = max(int(p.get("InstanceNumber") or 0) for p in before)
        tied = sorted(
            str(p.SOPInstanceUID) for p in before if int(p.get("InstanceNumber") or 0) == top
        )
        # Its UID as built, or as built after any earlier one (a returning content's).
        rebuilt = {uid} | {
            content_uid(sc, "sc", SC_CONTENT, after=str(p.SOPInstanceUID)) for p in before
        }
        if len(tied) == 1 and tied[0] in rebuilt and top:
            with_uid(sc, tied[0])
            sc.InstanceNumber = top
            kept.add(tied[0])
        elif uid in known:
            with_uid(sc, content_uid(sc, "sc", SC_CONTENT, after=tied[-1]))
    for series in {str(sc.SeriesInstanceUID) for sc in overlays}:
        taken = [
            int(p.get("InstanceNumber") or 0) for p in earlier if str(p.SeriesInstanceUID) == series
        ]
        if not taken:
            continue  # numbered from 1 as built
        new = [
            sc
            for sc in overlays
            if str(sc.SeriesInstanceUID) == series and str(sc.SOPInstanceUID) not in kept
        ]
        for n, sc in enumerate(new, start=max(taken) + 1):
            sc.InstanceNumber = n


def _source_of(overlay: Dataset) -> str:
    """The SOP Instance UID of the image an overlay was made from."""
    sources = overlay.get("SourceImageSequence") or []
    return str(sources[0].get("ReferencedSOPInstanceUID", "")) if sources else ""


def _study_header(analysis: StudyAnalysis, headers: Mapping[str, Dataset]) -> Dataset:
    """The header whose patient and study attributes every result of the study carries: of
    the images the results cite, the one received last (a name or an accession corrected in
    the PACS comes with the images sent again). The SR took the first by UID, each overlay
    its own image's: one study's results named two accessions."""
    cited = [i.sop_instance_uid for i in analysis.images if i.sop_instance_uid in headers]
    # Of those, one that names the patient: an image with an empty Patient ID, received
    # last, put every result of the study under no ID.
    named = [uid for uid in cited if stored_text(headers[uid], "PatientID")]
    chosen = headers[(named or cited)[-1]] if cited else headers[min(headers)]
    header = _with_the_issuer(chosen, [headers[uid] for uid in cited])
    differing = disagreements(headers.values(), chosen)
    if differing:
        skipped = bool(named) and named[-1] != cited[-1]  # the last had no Patient ID
        which = "received last with a Patient ID" if skipped else "received last"
        lent = (
            " (with the Issuer of Patient ID its other images give)" if header is not chosen else ""
        )
        log.warning(
            "study %s: its images disagree on %s; every result carries those of SOP instance "
            "%s, %s%s", analysis.study_uid, ", ".join(differing), chosen.SOPInstanceUID, which,
            lent,
        )  # fmt: skip
    return header


def _with_the_issuer(chosen: Dataset, cited: Sequence[Dataset]) -> Dataset:
    """``chosen`` with the Issuer of Patient ID the study gives its Patient ID, where it
    gives none itself (analyse merges an ID without an issuer with its one issuer: the
    results, filed without it, could go to the same ID of the PACS's default domain)."""
    patient = stored_text(chosen, "PatientID")
    if not patient or stored_text(chosen, "IssuerOfPatientID"):
        return chosen
    issuing = [
        h
        for h in cited
        if stored_text(h, "PatientID") == patient and stored_text(h, "IssuerOfPatientID")
    ]
    if len({stored_text(h, "IssuerOfPatientID") for h in issuing}) != 1:
        return chosen
    lent = copy.deepcopy(chosen)
    lent.IssuerOfPatientID = issuing[-1].IssuerOfPatientID  # decoded in its own set
    return lent


def _map_branch(manifest: Manifest) -> str | None:
    """The branch a heat map comes from when it is another head than the reported
    probabilities' (the multimodal engine's ``radiograph_logits``: "radiograph"; Hip-Net's
    maps, of its members' AP branches, while its probabilities fuse the lateral's: "AP")."""
    if manifest.heatmap.kind == "interpretive-map":
        return "AP" if "lateral" in {t.name for t in manifest.inputs} else None
    head = manifest.heatmap.logits_output
    if head is None or head == manifest.probability_output:
        return None
    return head.removesuffix("_logits") or head


def _ct_headers(analysis: StudyAnalysis) -> dict[str, Dataset]:
    used = {
        hip.decision.prediction.task.ct_series
        for hip in analysis.hips
        if hip.decision.prediction.inputs.get("ct")
    }
    return {
        image.sop_instance_uid: pydicom.dcmread(image.path, stop_before_pixels=True)
        for image in analysis.images
        if image.series_uid in used
    }


def summary(analysis: StudyAnalysis) -> str:
    """The job record's JSON: the priority and each hip's findings (no patient data)."""
    hips: list[dict[str, Any]] = []
    for hip in analysis.hips:
        d = hip.decision
        task = d.prediction.task
        hips.append(
            {
                "engine": task.engine,
                "version": d.prediction.version,
                "side": task.side,
                # Which AP: a hip shown by two (a pelvis and a separate AP of that hip) has
                # two entries, which read the same without it.
                "ap": task.ap.sop_instance_uid,
                "views": "AP+LATERAL" if task.lateral else "AP",
                "priority": d.priority,
                "reported": [
                    {
                        "name": f.name,
                        "probability": shown_probability(f, 4),
                        # As the SR's banner and the overlays print it: 0.3996 under a
                        # threshold of 0.4 reads p=0.39, 0.9996 p>0.99.
                        "shown": probability_text(f),
                        "present": f.present,
                    }
                    for f in reported_findings(d)
                ],
                "pji_risk": d.prediction.pji_risk,
                "inputs": dict(d.prediction.inputs),
                "attention": {k: round(v, 4) for k, v in d.prediction.attention.items()},
            }
        )
    return json.dumps(
        {
            "priority": analysis.priority,
            "inference_seconds": round(analysis.inference_seconds, 4),
            "hips": hips,
            "not_analysed": [{"sop_instance_uid": u, "why": w} for u, w in analysis.not_analysed],
            "held_back": list(analysis.held_back),
        },
        sort_keys=True,
    )
