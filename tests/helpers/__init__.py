"""Test helpers shared between test packages (synthetic DICOM data, ...)."""
