"""Routing: which engines see which hips of a completed study (rules in ``config.yaml``)."""

from dicom_node.route.plan import (
    cascade_tasks,
    held_back,
    not_a_lateral_of,
    plan_tasks,
    source_image,
    unused,
)
from dicom_node.route.rules import attributes_of, rule_matches

__all__ = [
    "attributes_of",
    "cascade_tasks",
    "held_back",
    "not_a_lateral_of",
    "plan_tasks",
    "rule_matches",
    "source_image",
    "unused",
]
