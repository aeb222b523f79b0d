"""Everything about models: architectures, training, export, runtimes and manifests.

The DICOM service (``dicom_node``) hands completed studies to the engines
defined here; engine artefacts are built into a cache folder, never into git.
The engines themselves arrive with the engines issue (seeds 001 and 002).
"""
