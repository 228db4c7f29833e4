"""Domain errors of SenseCare.

Core code raises these and nothing HTTP-specific; :mod:`sensecare.api.errors`
maps each class to one status code and the CLI prints its message as one line.
"""

from __future__ import annotations


class SenseCareError(Exception):
    """Base class: every error a user can cause or act on."""


# --- input -------------------------------------------------------------------


class InvalidRequestError(SenseCareError):
    """A request is malformed (bad parameter, bad multipart body)."""


class UnsupportedMediaTypeError(SenseCareError):
    """The request body's media type is not one we accept."""


class NotAcceptableError(SenseCareError):
    """None of the media types or transfer syntaxes the client accepts can be produced."""


class InvalidDicomError(SenseCareError):
    """Bytes that should be a DICOM Part 10 file are not a usable one."""


# --- archive -----------------------------------------------------------------


class NotFoundError(SenseCareError):
    """A study, series, instance or frame does not exist (for this tenant)."""


class ConflictError(SenseCareError):
    """The request contradicts what is stored (e.g. a UID under another study)."""


class StorageError(SenseCareError):
    """The object store could not persist or read bytes."""


class UndecodableInstanceError(SenseCareError):
    """A stored instance's content cannot be decoded for the view asked of it."""


# --- series -> volume ----------------------------------------------------------


class VolumeError(SenseCareError):
    """A series cannot be turned into a volume for analysis."""


class NotCTError(VolumeError):
    """The series is not CT."""


class TooFewSlicesError(VolumeError):
    """The series has too few axial slices to form a volume."""


class MissingSlicesError(VolumeError):
    """The slice positions have a gap larger than the regular spacing allows."""


class MixedGeometryError(VolumeError):
    """Slices disagree on orientation, matrix size or pixel spacing."""


class LocalizerError(VolumeError):
    """The series is a localizer (scout) and not a cross-sectional volume."""


# --- security ----------------------------------------------------------------


class AuthenticationError(SenseCareError):
    """No token, or a token we do not know."""


class PermissionDeniedError(SenseCareError):
    """A known caller asked for something its role does not allow."""


# --- configuration ------------------------------------------------------------


class ConfigurationError(SenseCareError):
    """Settings are inconsistent or a required resource is unavailable."""


class WorkerStartError(SenseCareError):
    """An HTTP worker process exited before it ever served (bad settings, database unreachable)."""


# --- results: SEG/SR ---


class ResultEncodingError(SenseCareError, ValueError):
    """Analysis results cannot be written as DICOM SEG/SR (bad mask, mixed source series, broken reference)."""


# --- analysis: lungs ---


class NoLungsFoundError(VolumeError):
    """The volume holds no lung-like air region (e.g. a head or an abdomen-only scan)."""


# --- phantoms ---


class PhantomError(SenseCareError):
    """A synthetic phantom cannot be built or written as asked."""


class PhantomSpecError(PhantomError):
    """A phantom specification is invalid (out-of-range thickness, unknown kernel, ...)."""


# --- evaluation ---


class EvaluationError(SenseCareError):
    """An evaluation cannot run as asked (no cases, bad option, unreadable ground truth)."""
