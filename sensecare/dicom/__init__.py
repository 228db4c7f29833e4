"""DICOM object handling (volumes, rendering, ...)."""
