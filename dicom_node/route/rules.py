"""Matching an instance's attributes against routing rules; rules are data, not code."""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.config_results import CODE_STRING_ATTRIBUTES, ROUTING_ATTRIBUTES, RoutingRule


def attributes_of(ds: Dataset, calling_ae: str) -> dict[str, str]:
    """The routing attributes of a header, each as text ("" when absent); Code Strings are
    upper-cased, so a rule listing ``AP`` also matches a sender's ``ap`` (rule values are
    upper-cased at load, see CODE_STRING_ATTRIBUTES). Several values (VM > 1, which these
    attributes should not have) are joined with a backslash, as DICOM writes them."""
    values: dict[str, str] = {}
    for keyword in ROUTING_ATTRIBUTES:
        if keyword == "CallingAE":
            values[keyword] = calling_ae
            continue
        value = ds.get(keyword)
        if isinstance(value, MultiValue):  # as DICOM writes several values: AP\PA
            text = "\\".join(str(v).strip() for v in value)
        else:
            text = "" if value is None else str(value).strip()
        values[keyword] = text.upper() if keyword in CODE_STRING_ATTRIBUTES else text
    return values


def rule_matches(rule: RoutingRule, attributes: Mapping[str, str]) -> bool:
    return all(c.matches(attributes.get(c.attribute, "")) for c in rule.when)
