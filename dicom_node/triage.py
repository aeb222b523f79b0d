"""Triage: per-class thresholds to findings, findings to a priority per hip and per study.

Thresholds and urgent (high-risk) findings come from the engine's manifest and
may be overridden per engine in ``triage``. A hip is URGENT when an urgent
finding is present, FLAG when any other finding is present, else NONE. The
engine's normal class being present is not a finding. A study takes the
highest priority of its hips.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from dicom_node.config_results import NORMAL_CODE, RoutingConfig, TriageConfig
from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.models import HipFinding, Prediction, TriageDecision
from engines.manifest import Manifest


class TriageError(DicomNodeError, ValueError):
    """A prediction does not fit the engine it claims to come from."""


PRIORITIES = ("NONE", "FLAG", "URGENT")  # in rising order


def check_overrides(cfg: TriageConfig, manifest: Manifest) -> None:
    """Refuse overrides that name classes the engine does not have."""
    names = set(manifest.class_names)
    for name in cfg.thresholds.get(manifest.name, {}):
        if name not in names:
            raise ConfigError(
                f"triage.thresholds.{manifest.name}.{name}: not a class of {manifest.name} "
                f"({', '.join(manifest.class_names)}), got {name!r}"
            )
    for name in cfg.urgent.get(manifest.name, ()):
        if name not in names:
            raise ConfigError(
                f"triage.urgent.{manifest.name}: not a class of {manifest.name} "
                f"({', '.join(manifest.class_names)}), got {name!r}"
            )


def check_cascade(routing: RoutingConfig, manifest: Manifest) -> None:
    """Refuse cascade rules after ``manifest``'s engine that name a class it does not have:
    a site's engine whose class is spelt otherwise (``tha``) never started the next engine,
    and nothing said so (the config checks the built-in catalogue only)."""
    for i, rule in enumerate(routing.cascade):
        if rule.after == manifest.name and rule.finding not in manifest.class_names:
            raise ConfigError(
                f"routing.cascade[{i}].finding: not a class of {manifest.name} "
                f"({', '.join(manifest.class_names)}), got {rule.finding!r}"
            )


def decide(prediction: Prediction, manifest: Manifest, cfg: TriageConfig) -> TriageDecision:
    if prediction.classes != manifest.class_names:
        raise TriageError(
            f"{manifest.name}: prediction classes {list(prediction.classes)} differ from the "
            f"manifest's {list(manifest.class_names)}"
        )
    thresholds = cfg.thresholds.get(manifest.name, {})
    urgent = cfg.urgent.get(manifest.name)
    findings = []
    for spec, probability in zip(manifest.classes, prediction.probabilities, strict=True):
        threshold = thresholds.get(spec.name, spec.threshold)
        findings.append(
            HipFinding(
                name=spec.name,
                probability=probability,
                threshold=threshold,
                present=probability >= threshold,
                urgent=(spec.name in urgent) if urgent is not None else spec.high_risk,
                normal=spec.normal or spec.code == NORMAL_CODE,
            )
        )
    positives = [f for f in findings if f.present and not f.normal]
    if any(f.urgent for f in positives):
        priority = "URGENT"
    elif positives:
        priority = "FLAG"
    else:
        priority = "NONE"
    return TriageDecision(prediction, tuple(findings), priority)


def study_priority(decisions: Iterable[TriageDecision]) -> str:
    return max((d.priority for d in decisions), key=PRIORITIES.index, default="NONE")


def shown_probability(finding: HipFinding, digits: int) -> float:
    """The finding's probability rounded to ``digits`` places, kept on its side of the
    threshold: 0.3996 under a threshold of 0.4 reads 0.39, not 0.40 beside "below
    threshold"; 0.4004 over a threshold of 0.4004 reads 0.41."""
    exact = Decimal(repr(finding.probability))
    step = Decimal(1).scaleb(-digits)
    value = exact.quantize(step, rounding=ROUND_HALF_UP)
    threshold = Decimal(repr(finding.threshold))
    if finding.present and value < threshold:
        value = exact.quantize(step, rounding=ROUND_CEILING)
    elif not finding.present and value >= threshold:
        value = exact.quantize(step, rounding=ROUND_FLOOR)
    return float(value)


def measured_probability(finding: HipFinding, digits: int = 4) -> float:
    """The probability as a report's number gives it: :func:`shown_probability`, never 1 or
    0 (a saturated output of 0.99996 read 1.0 in the SR, certainty the banner's ``p>0.99``
    avoids), unless the nearest value off them would cross the threshold."""
    value = shown_probability(finding, digits)
    step = 10.0**-digits
    clamped = round(min(max(value, step), 1 - step), digits)
    return clamped if (clamped >= finding.threshold) == finding.present else value


def probability_text(finding: HipFinding, digits: int = 2) -> str:
    """The probability as a line of text prints it, ``p=0.39``: :func:`shown_probability`,
    with a model's output never printed as certainty: 0.9996 reads ``p>0.99``, and so does
    an output of exactly 1 (a float32 softmax saturates; the demo printed "p=1.00")."""
    value = shown_probability(finding, digits)
    step = 10.0**-digits
    if value >= 1:
        return f"p>{1 - step:.{digits}f}"
    if value <= 0:
        return f"p<{step:.{digits}f}"
    return f"p={value:.{digits}f}"


def shown_threshold(threshold: float) -> str:
    """A threshold as reports print it: three decimals, more where it has them."""
    return f"{threshold:.3f}" if round(threshold, 3) == threshold else f"{threshold:.6g}"
