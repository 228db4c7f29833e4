"""DICOM DIMSE network services (C-ECHO, C-STORE, C-FIND) over the archive."""
