"""The objects the node writes into a study: a TID 1500 SR and Grad-CAM Secondary Captures.

The builders are pure: headers and decisions in, a highdicom object out, no I/O.
"""

from dicom_node.report.sc import build_overlay_sc
from dicom_node.report.sr import build_sr
from dicom_node.report.uids import ResultIdentity, sc_identity, sr_identity

__all__ = ["ResultIdentity", "build_overlay_sc", "build_sr", "sc_identity", "sr_identity"]
