"""``python -m dicom_node`` runs the command-line interface."""

from dicom_node.cli import main

raise SystemExit(main())
