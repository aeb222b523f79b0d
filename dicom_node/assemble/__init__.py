"""Study assembly: decide when a study has fully arrived and turn it into a durable job."""

from dicom_node.assemble.assembler import Assembler
from dicom_node.assemble.timing import Deadline, deadline

__all__ = ["Assembler", "Deadline", "deadline"]
