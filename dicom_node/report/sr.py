"""The study's Structured Report: a Comprehensive 3D SR following TID 1500 (pure builder).

One measurement group (TID 1501) per reported finding of each hip and engine:
the finding type (SNOMED CT), the finding site (hip joint with laterality),
the probability as a NUM (DCM "Probability", UCUM "1"), presence as a
qualitative evaluation (Present/Absent), the hip's priority, the algorithm
(TID 4019: name, version, parameters) and the source images. A hip reports each
finding present; when none is, its most probable class (with presence Absent,
or "Normal" present). A last group carries the study's triage priority, which
the Series Description also states so a worklist column shows it.

Multi-input engines say what they were given: one Present/Absent evaluation per
input (radiograph, CT, clinical text; or age, sex, height, weight), so a missing
modality is on record. Two Comments (TEXT) say the rest in words: the multimodal
engine's attention weights over its modalities (summing to 1; how it weighted each input,
which attention alone does not show to be what decided the result)
and, for an engine whose manifest carries a feature-importance analysis
(osteoporosis), its ranking. A class without a confirmed SNOMED CT concept has the
generic finding type DCM "Finding" and a Comment that names it: only standard
coding schemes, so every viewer and validator reads the report.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import highdicom as hd
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_node.errors import ReportError
from dicom_node.identity import MANUFACTURER, MODEL_NAME, SOFTWARE_VERSION
from dicom_node.models import HipFinding, HipTask, TriageDecision
from dicom_node.report import codes
from dicom_node.report.patient import building, evidence_header, fit_charset, output_charset
from dicom_node.report.uids import (
    SR_CONTENT,
    ResultIdentity,
    content_uid,
    device_uid,
    series_uid,
    with_uid,
)
from dicom_node.triage import measured_probability, shown_threshold
from engines.manifest import Manifest

SIDE_WORDS = {"R": "right", "L": "left"}
IMPORTANCE_SHOWN = 6  # the most important features the TEXT names


def reported_findings(decision: TriageDecision) -> tuple[HipFinding, ...]:
    """The findings a hip reports: every positive one, the urgent ones first, each kind most
    probable first; else the normal class when it is present; else the most probable
    finding, absent. The first is the one the overlay maps and its banner names beside
    the hip's priority: an URGENT hip's is an urgent finding (a fracture at 0.35 under
    osteoarthritis at 0.55 was shown as "osteoarthritis ... URGENT").

    Never the normal class absent: "Normal: absent" reads as abnormal when nothing
    crossed its threshold, and its heat map would show where the hip looks normal. Nor the
    "nothing found" class of an engine of one finding (osteoporosis): it says nothing of the
    joint, and "Normal" at the hip joint beside the same hip's dislocation contradicted it;
    that engine reports its finding absent.
    """
    positives = sorted(decision.positives, key=lambda f: (not f.urgent, -f.probability))
    if positives:
        return tuple(positives)
    abnormal = [f for f in decision.findings if not f.normal]
    normal = [f for f in decision.findings if f.normal and f.present]
    if normal and len(abnormal) != 1:
        return (max(normal, key=lambda f: f.probability),)
    candidates = abnormal or list(decision.findings)
    return (max(candidates, key=lambda f: f.probability),)


def description(
    priority: str,
    decisions: Sequence[TriageDecision],
    manifests: Mapping[str, Manifest],
    incomplete: bool = False,
) -> str:
    """``AI triage URGENT: femoral neck fracture R+L`` (a Series Description, at most 64
    chars); ``AI triage NONE (incomplete)`` where an image of the study could not be analysed.

    Each present finding once, in its manifest's wording, with its sides (R+L: was named
    once per side, and the cut at 64 characters dropped the second fracture's side). Urgent
    first, then what a cascade found before the finding that started it (a loosening
    before the prosthesis it was looked for in, whatever their probabilities), then the
    most probable, across engines (the cascade's dislocation that made a study URGENT came
    last and was cut off)."""
    triggers = {
        (*t.trigger, t.side) for d in decisions if d.positives and (t := d.prediction.task).trigger
    }
    # Each wording once, with every side it was found on; ordered as a whole (a prosthesis
    # on both hips, started the cascade on one: was placed by the other side's probability,
    # before the loosening found on the first).
    entries: dict[str, tuple[set[str], bool, bool, float]] = {}
    for d in decisions:
        task = d.prediction.task
        manifest = manifests.get(task.engine)
        for f in reported_findings(d) if d.positives else ():
            words = manifest.display(f.name) if manifest else f.name.replace("_", " ")
            sides, urgent, trigger, probability = entries.get(words, (set(), False, False, 0.0))
            entries[words] = (
                sides | {task.side},
                urgent or f.urgent,
                trigger or (task.engine, f.name, task.side) in triggers,
                max(probability, f.probability),
            )
    ordered = sorted(entries.items(), key=lambda e: (not e[1][1], e[1][2], -e[1][3]))
    parts = [
        f"{words} {'+'.join(s for s in ('R', 'L') if s in sides)}" for words, (sides, *_) in ordered
    ]
    head = f"AI triage {priority}" + (" (incomplete)" if incomplete else "")
    text = head + (": " + ", ".join(parts) if parts else "")
    return text if len(text) <= 64 else text[:61] + "..."


def _finding_code(manifest: Manifest, name: str) -> Code:
    spec = next((c for c in manifest.classes if c.name == name), None)
    if spec is None:
        raise ReportError(f"{manifest.name}: no class {name!r} in its manifest")
    if spec.code is None or spec.meaning is None:
        # No SNOMED CT concept could be confirmed for this class (docs/engines.md): the
        # generic "Finding", named by a Comment, rather than a borrowed wrong concept.
        return codes.FINDING
    return Code(spec.code, "SCT", spec.meaning)


def _comments(
    manifest: Manifest, finding: HipFinding, attention: Mapping[str, float],
    inputs: Mapping[str, bool], notes: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    texts = list(notes)
    spec = next(c for c in manifest.classes if c.name == finding.name)
    if spec.code is None:
        texts.append(f"finding: {spec.display} (no SNOMED CT concept confirmed)")
    if attention:
        parts = [
            f"{codes.INPUT_WORDS.get(k, k)} {w:.2f}" + ("" if inputs.get(k, True) else " (missing)")
            for k, w in attention.items()
        ]
        texts.append(
            "attention weights over the inputs (how the engine weighted each; not a measure "
            "of what decided the result): " + ", ".join(parts)
        )
    summary = importance_summary(manifest)
    if summary:
        texts.append(summary)
    return texts


def _group(
    decision: TriageDecision,
    finding: HipFinding,
    manifest: Manifest,
    backend: str,
    headers: Mapping[str, Dataset],
    number: int,
    study_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    task = decision.prediction.task
    sources = [task.ap.sop_instance_uid]
    if task.lateral is not None:
        sources.append(task.lateral.sop_instance_uid)
    missing = [uid for uid in sources if uid not in headers]
    if missing:
        raise ReportError(f"no header for source instance(s) {', '.join(missing)}")
    parameters = [
        f"backend={backend}",
        f"threshold={shown_threshold(finding.threshold)}",
        f"views={'AP+LATERAL' if task.lateral else 'AP'}",
    ]
    prediction = decision.prediction
    if prediction.pji_risk is not None:
        # On a 0-100 scale: "pji_risk=0.1" read as a probability of 10 %.
        parameters.append(f"pji_risk={prediction.pji_risk:.1f}/100")
    inputs = [
        hd.sr.QualitativeEvaluation(
            codes.input_code(k, task.ap.attributes.get("Modality", "")),
            codes.PRESENT if given else codes.ABSENT,
        )
        for k, given in prediction.inputs.items()
    ]
    tracking = hd.sr.TrackingIdentifier(
        uid=_tracking_uid(study_uid, manifest, task, finding),
        identifier=f"{manifest.name} {SIDE_WORDS[task.side]} hip #{number}",
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=_finding_code(manifest, finding.name),
        finding_sites=[
            hd.sr.FindingSite(
                codes.site_of(_finding_code(manifest, finding.name)),
                laterality=codes.LATERALITY[task.side],
            )
        ],
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=manifest.name, version=manifest.version, parameters=parameters
        ),
        measurements=[
            hd.sr.Measurement(
                name=codes.PROBABILITY, value=measured_probability(finding), unit=codes.NO_UNITS
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                codes.PRESENCE, codes.PRESENT if finding.present else codes.ABSENT
            ),
            # The hip's urgency by this engine, where it is urgent. The study's CAD summary
            # (CID 6047: "All algorithms succeeded; without findings") is the study triage
            # group's: in each group it contradicted the others (an osteoporosis group said
            # "without findings" for a hip with an urgent dislocation) and a PARTIAL report.
            *(
                [hd.sr.QualitativeEvaluation(codes.PRIORITY, codes.PRIORITY_VALUES["URGENT"])]
                if decision.priority == "URGENT"
                else []
            ),
            *inputs,
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(headers[uid]) for uid in sources
        ],
    )
    for text in _comments(
        manifest, finding, prediction.attention, prediction.inputs, prediction.notes
    ):
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.COMMENT, value=text, relationship_type=RelationshipTypeValues.CONTAINS
            )
        )
    return group


def importance_summary(manifest: Manifest) -> str:
    """``permutation importance (drop of ROC AUC, held-out phantoms): age 0.120, ...``
    from the manifest's evaluation, or "" when the engine has none."""
    ranking = manifest.evaluation.get("importance")
    if not isinstance(ranking, list) or not ranking:
        return ""
    data = manifest.evaluation.get("data", "held-out data")
    parts = [
        f"{item['name']} {float(item['mean']):.3f}"
        for item in ranking[:IMPORTANCE_SHOWN]
        if isinstance(item, Mapping) and "name" in item and "mean" in item
    ]
    return f"permutation importance (drop of ROC AUC, {data}): " + ", ".join(parts)


def _tracking_uid(study_uid: str, manifest: Manifest, task: HipTask, finding: HipFinding) -> str:
    """Derived, so a rebuilt report tracks the same finding under the same UID; one per hip,
    finding and AP image (a hip shown by a pelvis and by an AP of its own gives two groups,
    two tracked observations)."""
    parts = [
        "dicom-node/tracking", study_uid, manifest.name, manifest.version, task.side,
        finding.name, task.ap.sop_instance_uid,
    ]  # fmt: skip
    uid: str = generate_uid(entropy_srcs=["\x1f".join(parts)])
    return uid


def build_sr(
    decisions: Sequence[TriageDecision],
    manifests: Mapping[str, Manifest],
    backends: Mapping[str, str],
    headers: Mapping[str, Dataset],
    priority: str,
    identity: ResultIdentity,
    institution_name: str | None = None,
    not_analysed: Sequence[tuple[str, str]] = (),
    study: Dataset | None = None,
    device: str | None = None,
    held_back: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """The study's SR from its triage decisions; ``headers`` are the source instances' headers.
    ``not_analysed`` names the images that could not be (SOP Instance UID, why): the report
    is then PARTIAL, its study priority "Not all algorithms succeeded" (CID 6047) unless
    URGENT, and a Comment names each image. ``study`` (one of ``headers``) is the header whose
    patient and study attributes the report carries (default: the first by SOP Instance
    UID); the overlays take the same (:func:`~dicom_node.report.sc.build_overlay_sc`).
    ``device`` is the Device Observer UID (TID 1004) of this installation of the node
    (default: the software's own, :func:`~dicom_node.report.uids.device_uid`).
    ``held_back`` says which engines a header value, present but not usable, kept from an
    image (:func:`~dicom_node.route.plan.held_back`): a Comment each."""
    if not decisions:
        raise ReportError("build_sr: expected at least one triage decision, got none")
    if priority not in codes.PRIORITY_VALUES:
        raise ReportError(
            f"priority: expected one of {', '.join(codes.PRIORITY_VALUES)}, got {priority!r}"
        )
    study_uids = {str(h.StudyInstanceUID) for h in headers.values()}
    if len(study_uids) != 1:
        raise ReportError(f"headers: expected one study, got {len(study_uids)}")
    [study_uid] = study_uids
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for decision in decisions:
        manifest = manifests[decision.prediction.task.engine]
        for finding in reported_findings(decision):
            groups.append(
                _group(
                    decision, finding, manifest, backends.get(manifest.name, "unknown"),
                    headers, len(groups) + 1, study_uid,
                )
            )  # fmt: skip
    study_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[f"dicom-node/tracking\x1f{study_uid}\x1fstudy"]),
            identifier="study triage",
        ),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                codes.PRIORITY,
                (codes.INCOMPLETE_PRIORITY_VALUES if not_analysed else codes.PRIORITY_VALUES)[
                    priority
                ],
            )
        ],
    )
    # Every engine's clinical-use statement, in the report itself: an engine without
    # overlays (osteoporosis) has no banner to carry it, and the SR is what a viewer lists.
    used = sorted({d.prediction.task.engine for d in decisions})
    for name in used:
        manifest = manifests[name]
        study_group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=f"{manifest.name} {manifest.version}: {manifest.clinical_use}",
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
    for uid, why in not_analysed:
        study_group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=f"not analysed: SOP instance {uid} ({why})",
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
    for note in held_back:
        study_group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.COMMENT, value=note, relationship_type=RelationshipTypeValues.CONTAINS
            )
        )
    groups.append(study_group)
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device or device_uid(),
            name="dicom-node",
            manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=groups,
    )
    ordered = sorted(headers.values(), key=lambda h: str(h.SOPInstanceUID))
    if study is not None:  # first: highdicom takes the patient and study from evidence[0]
        ordered.sort(key=lambda h: str(h.SOPInstanceUID) != str(study.SOPInstanceUID))
    evidence = [evidence_header(h) for h in ordered]
    series_description = description(priority, decisions, manifests, incomplete=bool(not_analysed))
    series = series_uid(str(evidence[0].StudyInstanceUID), "sr", str(identity.series_number),
                        series_description)  # fmt: skip
    with building("SR"):
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=series,
            series_number=identity.series_number,
            sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MODEL_NAME,
            software_versions=SOFTWARE_VERSION,
            institution_name=institution_name,
            series_description=series_description,
            is_complete=not not_analysed,
            specific_character_set=output_charset(evidence[0]),
        )
    fit_charset(sr)
    return sr


def as_latest_report(sr: Dataset, previous: Sequence[Dataset]) -> Dataset:
    """``sr`` with its final SOP Instance UID, superseding the study's earlier reports
    ``previous`` (their headers, with Instance Numbers and Predecessor Documents:
    :func:`supersede`).

    The UID comes from the content (:func:`~dicom_node.report.uids.content_uid`), so the
    latest report rebuilt (a crash, a rerun that finds the same) is the same object: its
    UID, number and predecessors as delivered. A report that replaces others also names the
    latest of them in its UID: its number and predecessors are part of what it is. So
    content that returns to an earlier report's, superseded since (a name corrected, then
    the correction undone), is a new object (under the earlier report's UID it was not sent:
    the PACS holds that UID already), and so is the same content built once the study's
    earlier reports are forgotten (purged, then the study re-sent): it was built under the
    superseding report's UID, numbered 1 without predecessors, and sent as that object."""
    uid = content_uid(sr, "sr", SR_CONTENT)
    if not previous:
        return supersede(with_uid(sr, uid), previous)
    latest = max(previous, key=_report_order)
    # The report a returning content was built after is among the latest's predecessors,
    # also once its own row and file are gone (a dead letter discarded).
    earlier = {str(p.SOPInstanceUID) for p in previous} | set(_predecessors(latest))
    rebuilt = {uid} | {content_uid(sr, "sr", SR_CONTENT, after=u) for u in earlier}
    if str(latest.SOPInstanceUID) in rebuilt:
        with_uid(sr, str(latest.SOPInstanceUID))
        if "InstanceNumber" not in latest:  # a report of another writer: numbered as new
            return supersede(sr, previous)
        sr.InstanceNumber = latest.InstanceNumber
        if "PredecessorDocumentsSequence" in sr:
            del sr.PredecessorDocumentsSequence
        if "PredecessorDocumentsSequence" in latest:
            sr.PredecessorDocumentsSequence = copy.deepcopy(latest.PredecessorDocumentsSequence)
        return sr
    uid = content_uid(sr, "sr", SR_CONTENT, after=str(latest.SOPInstanceUID))
    return supersede(with_uid(sr, uid), previous)


def _predecessors(report: Dataset) -> list[str]:
    return [
        str(item.ReferencedSOPInstanceUID)
        for study in report.get("PredecessorDocumentsSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for item in series.get("ReferencedSOPSequence", [])
        if "ReferencedSOPInstanceUID" in item
    ]


def _report_order(report: Dataset) -> tuple[int, str]:
    return int(report.get("InstanceNumber") or 0), str(report.SOPInstanceUID)


def supersede(sr: Dataset, previous: Sequence[Dataset]) -> Dataset:
    """``sr`` as the newer version of the study's earlier reports ``previous`` (their
    headers: the node's SRs of the same study, written by earlier jobs): each is referenced
    in the Predecessor Documents Sequence (PS3.3 C.17.2: "shall also refer to SR SOP
    Instances that are replaced by this document"), and the Instance Number follows them,
    so a viewer tells the latest from the one it replaces (both were numbered 1): one
    more than the highest of theirs (or than their count, where they carry none). A
    previous report with ``sr``'s own UID is the same report rebuilt: not its predecessor.
    """
    replaced = sorted(
        (p for p in previous if str(p.SOPInstanceUID) != str(sr.SOPInstanceUID)),
        key=_report_order,
    )
    for p in replaced:
        if str(p.StudyInstanceUID) != str(sr.StudyInstanceUID):
            raise ReportError(
                f"previous report {p.SOPInstanceUID} is of study {p.StudyInstanceUID}, not "
                f"{sr.StudyInstanceUID}"
            )
    # After the highest: the count of those still known fell behind it once a report's row
    # was gone (a dead letter discarded), and the next report took a delivered one's number.
    numbers = [int(p.get("InstanceNumber") or 0) for p in replaced]
    sr.InstanceNumber = max([len(replaced), *numbers]) + 1
    if "PredecessorDocumentsSequence" in sr:
        del sr.PredecessorDocumentsSequence
    if not replaced:
        return sr
    by_series: dict[str, list[Dataset]] = {}
    for p in replaced:
        by_series.setdefault(str(p.SeriesInstanceUID), []).append(p)
    study = Dataset()
    study.StudyInstanceUID = sr.StudyInstanceUID
    study.ReferencedSeriesSequence = []
    for uid, reports in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = uid
        series.ReferencedSOPSequence = []
        for p in reports:
            item = Dataset()
            item.ReferencedSOPClassUID = p.SOPClassUID
            item.ReferencedSOPInstanceUID = p.SOPInstanceUID
            series.ReferencedSOPSequence.append(item)
        study.ReferencedSeriesSequence.append(series)
    sr.PredecessorDocumentsSequence = [study]
    return sr
