"""Configuration of the results half of the node: routing, triage, reports, sending, destinations.

Same rules as :mod:`dicom_node.config`: frozen dataclasses, every error names
the key path and the bad value.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.address import host_port
from dicom_node.config_checks import (
    as_ae_title,
    as_host,
    as_list,
    as_long_string,
    as_name,
    as_stated_list,
    as_str,
    folder,
    get_key,
    int_range,
    known,
    positive,
    show,
    sub_mapping,
)
from dicom_node.errors import ConfigError
from engines.catalog import engine_spec

# The attributes a routing condition may test. CallingAE is the AE title that sent the instance.
ROUTING_ATTRIBUTES = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "ImageLaterality",
    "Laterality",
    "SOPClassUID",
    "CallingAE",
    "StudyDescription",
    "SeriesDescription",
    "Manufacturer",
)
# Code String attributes: DICOM defines their values in upper case; senders and admins do not
# always write them so. A header's values are upper-cased before matching (route.rules), a
# condition's list values at load, and a condition's pattern matches ignoring case, so
# `Modality: [dx]` and `"dx|cr"` select a DX image, as `[DX]` does. Other attributes
# (UIDs, AE titles, descriptions) compare exactly.
CODE_STRING_ATTRIBUTES = frozenset(
    {"Modality", "BodyPartExamined", "ViewPosition", "ImageLaterality", "Laterality"}
)
# What a rule may require of a study besides its conditions: a CT series, clinical text,
# or the patient's demographics in the image's header (dicom_node.clinical).
REQUIREMENTS = ("ct", "text", "age", "sex", "height", "weight")
HEATMAP_POLICIES = ("positive", "positive-or-top", "none")
# Body Part Examined of a CT that may show the hips (PS3.16 Annex L terms; "" when absent, as
# many CTs carry none): its field is fitted whole into a CT engine's grid, so a chest CT in
# the same study must not be taken for the hips', nor by default a chest-abdomen-pelvis or
# whole-body CT, whose 600-1500 mm would squeeze the hips into a few slices of the grid
# (docs/results.md).
CT_BODY_PARTS = ("", "HIP", "PELVIS", "ABDOMENPELVIS")
_CODE_STRING = re.compile(r"[A-Z0-9 _]{0,16}")
DESTINATION_TYPES = ("dicom", "folder")


@dataclass(frozen=True)
class Condition:
    """One attribute test: a regular expression (full match; ignoring case for a Code String
    attribute) or a list of exact values."""

    attribute: str
    pattern: str | None = None
    values: tuple[str, ...] = ()

    def matches(self, value: str) -> bool:
        if self.pattern is not None:
            flags = re.IGNORECASE if self.attribute in CODE_STRING_ATTRIBUTES else 0
            return re.fullmatch(self.pattern, value, flags) is not None
        return value in self.values


@dataclass(frozen=True)
class RoutingRule:
    """Instances matching every condition of ``when`` go to ``engine``, when the study
    also has everything in ``requires`` (REQUIREMENTS)."""

    name: str
    engine: str
    when: tuple[Condition, ...] = ()
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class CascadeRule:
    """A hip that ``after`` finds with ``finding`` also goes to ``engine`` (with its views)."""

    after: str
    finding: str
    engine: str


_DEFAULT_RADIOGRAPH = (
    Condition("Modality", values=("DX", "CR")),
    Condition("BodyPartExamined", pattern="(?i)(HIP|PELVIS)?"),
)


_DEFAULT_AP = (*_DEFAULT_RADIOGRAPH, Condition("ViewPosition", values=("AP", "PA")))


@dataclass(frozen=True)
class RoutingConfig:
    rules: tuple[RoutingRule, ...] = (
        RoutingRule("hip-ap-radiographs", "hip_screen", _DEFAULT_AP),
        RoutingRule("hip-radiograph-with-ct", "hip_multimodal", _DEFAULT_AP, ("ct",)),
        RoutingRule("hip-osteoporosis-risk", "osteoporosis", _DEFAULT_AP, ("age", "sex")),
    )
    cascade: tuple[CascadeRule, ...] = (
        CascadeRule("hip_screen", "total_hip_arthroplasty", "hipnet"),
    )
    # ViewPosition values that make an image of one hip a lateral view for dual-view engines.
    lateral_views: tuple[str, ...] = ("LATERAL", "LL", "RL", "LLO", "RLO")
    # Body Part Examined values (upper case; "" for none) of a CT series that may show the
    # hips: a chest or head CT in the same study is never an engine's CT input.
    ct_body_parts: tuple[str, ...] = CT_BODY_PARTS


@dataclass(frozen=True)
class TriageConfig:
    # engine -> class -> threshold; overrides the manifest's thresholds.
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # engine -> classes that make a case URGENT; overrides the manifest's high-risk list.
    urgent: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultsConfig:
    heatmaps: str = "positive-or-top"
    sr_series_number: int = 9901
    sc_series_number: int = 9902
    max_overlay_edge: int = 1536  # Secondary Capture pixels; larger sources are scaled down
    institution_name: str | None = None


@dataclass(frozen=True)
class SendingConfig:
    max_attempts: int = 24  # with the backoff below: 42-84 minutes of retries
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 300.0
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM peer (C-STORE) or a folder of files."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    type: str = "dicom"
    path: Path | None = None

    @property
    def described(self) -> str:
        """As logs name it: ``pacs (ORTHANC@10.0.0.5:4242)`` or ``copies (folder /srv/x)``."""
        if self.type == "folder":
            return f"{self.name} (folder {self.path})"
        return f"{self.name} ({self.ae_title}@{host_port(self.host, self.port)})"


# What an engine reads as an AP or a lateral: Computed Radiography and Digital X-Ray For
# Presentation images. Not For Processing (raw detector data, whose For Presentation copy is
# the one to read), nor a Secondary Capture (another product's picture of an image, often in
# colour, that may copy its source's Modality and View Position), nor a CT slice.
RADIOGRAPH_CLASSES = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
# The views the engines analyse: never a lateral.
AP_VIEWS = ("AP", "PA")


def parse_routing(raw: Mapping[str, Any], engines: tuple[str, ...]) -> RoutingConfig:
    d = RoutingConfig()
    known(raw, "routing", set(d.__dataclass_fields__))
    rules = d.rules
    if "rules" in raw:
        rules = tuple(
            _rule(item, f"routing.rules[{i}]", engines)
            for i, item in enumerate(as_stated_list(raw["rules"], "routing.rules"))
        )
    names = [r.name for r in rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"routing.rules[{i}].name: duplicate rule name, got {name!r}")
    cascade = d.cascade
    if "cascade" in raw:
        cascade = tuple(
            _cascade(item, f"routing.cascade[{i}]", engines)
            for i, item in enumerate(as_stated_list(raw["cascade"], "routing.cascade"))
        )
    # A cascade runs after an engine a rule (or an earlier cascade) runs: else it can never
    # run, though its engines are opened at every start (rules for osteoporosis only, the
    # default cascade from hip_screen kept). One written in the file is refused; the
    # default's steps apply where their engine runs.
    runs = {r.engine for r in rules}
    grown = True
    while grown:  # the cascade applies every step at each round: in any order
        reached = {step.engine for step in cascade if step.after in runs}
        grown = not reached <= runs
        runs |= reached
    kept = []
    for i, step in enumerate(cascade):
        if step.after not in runs:
            if "cascade" not in raw:
                continue
            raise ConfigError(
                f"routing.cascade[{i}].after: no routing rule (nor another cascade step) runs "
                f"this engine, so this step never would, got {step.after!r}"
            )
        kept.append(step)
    cascade = tuple(kept)
    lateral = d.lateral_views
    if "lateral_views" in raw:
        lateral = tuple(
            as_str(v, f"routing.lateral_views[{i}]")
            for i, v in enumerate(as_stated_list(raw["lateral_views"], "routing.lateral_views"))
        )
        aps = [v for v in lateral if v.strip().upper() in AP_VIEWS]
        if aps:  # every AP would count as a lateral: every study skipped
            raise ConfigError(
                f"routing.lateral_views: {', '.join(AP_VIEWS)} are the views the engines "
                f"analyse, not laterals, got {show(list(lateral))}"
            )
    _never_select(rules, lateral)
    body_parts = d.ct_body_parts
    if "ct_body_parts" in raw:
        body_parts = tuple(
            _code_string(v, f"routing.ct_body_parts[{i}]")
            for i, v in enumerate(as_stated_list(raw["ct_body_parts"], "routing.ct_body_parts"))
        )
    return RoutingConfig(
        rules=rules, cascade=cascade, lateral_views=lateral, ct_body_parts=body_parts
    )


def _never_select(rules: tuple[RoutingRule, ...], lateral_views: tuple[str, ...]) -> None:
    """Refuse a rule that can select no image whatever the study: one that names only
    lateral views (only ever an AP's partner) or only SOP classes the engines never read.
    check-config passed them, and every study was skipped."""
    laterals = {v.strip().upper() for v in lateral_views}
    for i, rule in enumerate(rules):
        for condition in rule.when:
            path = f"routing.rules[{i}].when.{condition.attribute}"
            values = condition.values
            if not values:
                continue  # a regular expression: not judged here
            if condition.attribute == "ViewPosition" and all(
                v.strip().upper() in laterals for v in values
            ):
                raise ConfigError(
                    f"{path}: only lateral views (routing.lateral_views), which are only ever "
                    f"an AP's partner: the rule can select no image, got {show(list(values))}"
                )
            if condition.attribute == "SOPClassUID" and not set(values) & set(RADIOGRAPH_CLASSES):
                raise ConfigError(
                    f"{path}: no class the engines read ({', '.join(RADIOGRAPH_CLASSES)}: CR "
                    f"and DX For Presentation): the rule can select no image, got "
                    f"{show(list(values))}"
                )


def _code_string(value: Any, path: str) -> str:
    """A Code String value in upper case ("" allowed: the attribute absent or empty)."""
    text = value.strip().upper() if isinstance(value, str) else None
    if text is None or not _CODE_STRING.fullmatch(text):
        raise ConfigError(
            f"{path}: expected a Code String (up to 16 letters, digits, spaces or '_'; "
            f'"" for none), got {show(value)}'
        )
    return text


def _rule(item: Any, path: str, engines: tuple[str, ...]) -> RoutingRule:
    if not isinstance(item, dict):
        raise ConfigError(f"{path}: expected a mapping, got {show(item)}")
    known(item, path, {"name", "engine", "when", "requires"})
    for key in ("name", "engine"):
        if key not in item:
            raise ConfigError(f"{path}.{key}: required, got nothing")
    when = sub_mapping(item, "when", f"{path}.when")
    requires = as_list(item.get("requires", []), f"{path}.requires")
    for i, value in enumerate(requires):
        if value not in REQUIREMENTS:
            choices = ", ".join(REQUIREMENTS)
            raise ConfigError(f"{path}.requires[{i}]: expected one of {choices}, got {show(value)}")
    return RoutingRule(
        name=get_key(item, "name", path, "", as_name),
        engine=_engine(item["engine"], f"{path}.engine", engines),
        when=tuple(_condition(k, v, f"{path}.when.{k}") for k, v in when.items()),
        requires=tuple(dict.fromkeys(requires)),
    )


def _condition(attribute: str, value: Any, path: str) -> Condition:
    if attribute not in ROUTING_ATTRIBUTES:
        raise ConfigError(
            f"{path}: unknown attribute (known: {', '.join(ROUTING_ATTRIBUTES)}), got {attribute!r}"
        )
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a non-empty list of strings, got {show(value)}")
        if attribute in CODE_STRING_ATTRIBUTES:
            value = [v.upper() for v in value]  # headers are upper-cased too
        return Condition(attribute, values=tuple(value))
    if not isinstance(value, str):
        raise ConfigError(
            f"{path}: expected a regular expression or a list of values, got {show(value)}"
        )
    try:
        # A pattern Python warns about (FutureWarning: "[[:alpha:]]", grep's POSIX class,
        # is a set of '[', ':', 'a', ... in Python) never matched what it was written for:
        # refused like an invalid one, naming the key, not as a raw warning on stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            re.compile(value)
    except (re.error, Warning) as exc:
        raise ConfigError(
            f"{path}: not a valid regular expression ({exc}), got {value!r}"
        ) from None
    return Condition(attribute, pattern=value)


def _cascade(item: Any, path: str, engines: tuple[str, ...]) -> CascadeRule:
    if not isinstance(item, dict):
        raise ConfigError(f"{path}: expected a mapping, got {show(item)}")
    known(item, path, {"after", "finding", "engine"})
    for key in ("after", "finding", "engine"):
        if key not in item:
            raise ConfigError(f"{path}.{key}: required, got nothing")
    rule = CascadeRule(
        after=_engine(item["after"], f"{path}.after", engines),
        finding=as_str(item["finding"], f"{path}.finding"),
        engine=_engine(item["engine"], f"{path}.engine", engines),
    )
    classes = engine_spec(rule.after).class_names
    if rule.finding not in classes:
        raise ConfigError(
            f"{path}.finding: not a class of {rule.after} ({', '.join(classes)}), "
            f"got {rule.finding!r}"
        )
    return rule


def _engine(value: Any, path: str, engines: tuple[str, ...]) -> str:
    name = as_str(value, path)
    if name not in engines:
        raise ConfigError(f"{path}: expected one of {', '.join(engines)}, got {name!r}")
    return name


NORMAL_CODE = "17621005"  # SNOMED CT "Normal": the class that is not a finding


def parse_triage(raw: Mapping[str, Any], engines: tuple[str, ...]) -> TriageConfig:
    known(raw, "triage", {"thresholds", "urgent"})
    thresholds: dict[str, dict[str, float]] = {}
    for engine, classes in sub_mapping(raw, "thresholds", "triage.thresholds").items():
        where = f"triage.thresholds.{engine}"
        _engine(engine, where, engines)
        if not isinstance(classes, dict):
            raise ConfigError(
                f"{where}: expected a mapping of class to threshold, got {show(classes)}"
            )
        thresholds[engine] = {}
        for name, value in classes.items():
            _class(engine, name, f"{where}.{name}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise ConfigError(
                    f"{where}.{name}: expected a probability between 0 and 1, got {show(value)}"
                )
            thresholds[engine][str(name)] = float(value)
    urgent: dict[str, tuple[str, ...]] = {}
    for engine, classes in sub_mapping(raw, "urgent", "triage.urgent").items():
        where = f"triage.urgent.{engine}"
        _engine(engine, where, engines)
        if classes is None:
            continue  # null: the manifest's high-risk classes, as if the key were absent
        urgent[engine] = tuple(
            _class(engine, as_str(c, f"{where}[{i}]"), where)
            for i, c in enumerate(as_list(classes, where))
        )
        for name in urgent[engine]:
            finding = engine_spec(engine).finding(name)
            if finding.normal or finding.code == NORMAL_CODE:  # as triage.decide reads it
                raise ConfigError(
                    f"{where}: {name!r} is {engine}'s normal class, which is never a finding "
                    "(a normal hip is never urgent), got it listed"
                )
    return TriageConfig(thresholds=thresholds, urgent=urgent)


def _class(engine: str, name: Any, path: str) -> str:
    """A class of ``engine`` (its catalogue's; the node checks its manifest's again at start),
    so check-config finds a misspelt class, not only serve."""
    classes = engine_spec(engine).class_names
    if name not in classes:
        raise ConfigError(
            f"{path}: not a class of {engine} ({', '.join(classes)}), got {show(name)}"
        )
    return str(name)


def parse_results(raw: Mapping[str, Any]) -> ResultsConfig:
    d = ResultsConfig()
    known(raw, "results", set(d.__dataclass_fields__))
    heatmaps = get_key(raw, "heatmaps", "results", d.heatmaps, as_str)
    if heatmaps not in HEATMAP_POLICIES:
        raise ConfigError(
            f"results.heatmaps: expected one of {', '.join(HEATMAP_POLICIES)}, got {heatmaps!r}"
        )
    series = int_range(1, 2**31 - 1)
    cfg = ResultsConfig(
        heatmaps=heatmaps,
        sr_series_number=get_key(raw, "sr_series_number", "results", d.sr_series_number, series),
        sc_series_number=get_key(raw, "sc_series_number", "results", d.sc_series_number, series),
        max_overlay_edge=get_key(
            raw, "max_overlay_edge", "results", d.max_overlay_edge, int_range(256, 8192)
        ),
        institution_name=None
        if raw.get("institution_name") is None
        else as_long_string(raw["institution_name"], "results.institution_name"),
    )
    if cfg.sr_series_number == cfg.sc_series_number:
        raise ConfigError(
            "results.sc_series_number: must differ from results.sr_series_number, "
            f"got {cfg.sc_series_number}"
        )
    return cfg


def parse_sending(raw: Mapping[str, Any]) -> SendingConfig:
    d = SendingConfig()
    known(raw, "sending", set(d.__dataclass_fields__))
    cfg = SendingConfig(
        max_attempts=get_key(raw, "max_attempts", "sending", d.max_attempts, int_range(1, 1000)),
        # Greater than 0: the backoff doubles from it, and from 0 it would stay 0 (a short
        # outage would use up every attempt within seconds).
        backoff_seconds=get_key(raw, "backoff_seconds", "sending", d.backoff_seconds, positive),
        max_backoff_seconds=get_key(
            raw, "max_backoff_seconds", "sending", d.max_backoff_seconds, positive
        ),
        timeout_seconds=get_key(raw, "timeout_seconds", "sending", d.timeout_seconds, positive),
    )
    if cfg.max_backoff_seconds < cfg.backoff_seconds:
        raise ConfigError(
            "sending.max_backoff_seconds: must be at least sending.backoff_seconds "
            f"({cfg.backoff_seconds}), got {cfg.max_backoff_seconds}"
        )
    return cfg


def parse_destinations(value: Any, base: Path) -> tuple[Destination, ...]:
    items = as_list(value, "destinations")
    result: list[Destination] = []
    for i, item in enumerate(items):
        path = f"destinations[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: expected a mapping, got {show(item)}")
        kind = get_key(item, "type", path, "dicom", as_str)
        if kind not in DESTINATION_TYPES:
            raise ConfigError(
                f"{path}.type: expected one of {', '.join(DESTINATION_TYPES)}, got {kind!r}"
            )
        if kind == "folder":
            known(item, path, {"name", "type", "path"})
            required: tuple[str, ...] = ("name", "path")
        else:
            known(item, path, {"name", "type", "ae_title", "host", "port"})
            required = ("name", "ae_title", "host", "port")
        for key in required:
            if key not in item:
                raise ConfigError(f"{path}.{key}: required, got nothing")
        if kind == "folder":
            dest = Destination(
                name=get_key(item, "name", path, "", as_name),
                type="folder",
                path=folder(as_str(item["path"], f"{path}.path"), base, f"{path}.path"),
            )
        else:
            dest = Destination(
                name=get_key(item, "name", path, "", as_name),
                ae_title=get_key(item, "ae_title", path, "", as_ae_title),
                host=get_key(item, "host", path, "", as_host),
                port=get_key(item, "port", path, 0, int_range(1, 65535)),
            )
        if any(d.name == dest.name for d in result):
            raise ConfigError(f"{path}.name: duplicate destination name, got {dest.name!r}")
        result.append(dest)
    return tuple(result)


__all__ = [
    "CODE_STRING_ATTRIBUTES",
    "HEATMAP_POLICIES",
    "ROUTING_ATTRIBUTES",
    "CascadeRule",
    "Condition",
    "Destination",
    "ResultsConfig",
    "RoutingConfig",
    "RoutingRule",
    "SendingConfig",
    "TriageConfig",
    "parse_destinations",
    "parse_results",
    "parse_routing",
    "parse_sending",
    "parse_triage",
]
