"""Matching an instance's attributes against routing rules; rules are data, not code."""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.dataset import Dataset

from dicom_node.config_results import ROUTING_ATTRIBUTES, RoutingRule

# Code String attributes: DICOM defines their values in upper case; senders do not always.
_CODE_STRINGS = frozenset({"Modality", "BodyPartExamined", "ViewPosition", "ImageLaterality",
                           "Laterality"})  # fmt: skip


def attributes_of(ds: Dataset, calling_ae: str) -> dict[str, str]:
    """The routing attributes of a header, each as text ("" when absent); Code Strings are
    upper-cased, so a rule listing ``AP`` also matches a sender's ``ap``."""
    values: dict[str, str] = {}
    for keyword in ROUTING_ATTRIBUTES:
        if keyword == "CallingAE":
            values[keyword] = calling_ae
            continue
        value = ds.get(keyword)
        text = "" if value is None else str(value).strip()
        values[keyword] = text.upper() if keyword in _CODE_STRINGS else text
    return values


def rule_matches(rule: RoutingRule, attributes: Mapping[str, str]) -> bool:
    return all(c.matches(attributes.get(c.attribute, "")) for c in rule.when)
