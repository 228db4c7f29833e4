"""HTTP API: DICOMweb (PS3.18) under /dicomweb and SenseCare's REST under /api/v1."""
