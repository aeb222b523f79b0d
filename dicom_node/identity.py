"""How the node names itself in the DICOM objects and associations it makes.

The Manufacturer value is also how the node recognises its own SR and SC
objects when a PACS routes them back (see ``receive/own_output.py``).
"""

from __future__ import annotations

from pydicom.uid import generate_uid
from pynetdicom import AE

from dicom_node import __version__

MANUFACTURER = "dicom-node"
MODEL_NAME = "Hip Triage Node"
SOFTWARE_VERSION = __version__
# Under pydicom's root (1.2.826.0.1.3680043.8.498), derived deterministically so
# every build of the same version names itself the same way.
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["dicom-node", "implementation-class"])
IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__.replace('.', '')}"[:16]


def name_the_node(ae: AE) -> None:
    """The node's Implementation Class UID and Version Name in ``ae``'s associations (the
    conformance statement gives them; pynetdicom's own would name the library)."""
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
