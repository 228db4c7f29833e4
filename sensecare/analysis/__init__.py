"""Finding, segmenting and measuring lung lesions on chest CT (issue #4)."""
