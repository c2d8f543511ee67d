"""The project's own exception types.

Every error a user can cause with bad input is one of these, with a message that says what was
wrong and what to do. Batch runs catch :class:`SscildError`, record ``str(err)`` for the scan and
go on; anything else is a bug in sscild.
"""
from __future__ import annotations


class SscildError(Exception):
    """Base class of every error sscild raises on purpose (bad input, missing model, bad config)."""


# --- input -----------------------------------------------------------------------------------
class InputError(SscildError):
    """The input scan cannot be used."""


class InputNotFoundError(InputError):
    """The path does not exist, or is an empty folder."""


class UnreadableInputError(InputError):
    """The file exists but cannot be read as an image (corrupt, truncated, unknown format)."""


class NotCTError(InputError):
    """The data is not a CT image (MR, secondary capture, ...)."""


class LocalizerError(NotCTError):
    """The series is a localizer/scout/topogram, not an axial CT volume."""


class TooFewSlicesError(InputError):
    """A volume is needed but the series has a single slice or too few slices."""


class SingleSliceError(TooFewSlicesError):
    """The input is a single 2D slice."""


class MissingSlicesError(InputError):
    """There is a gap between consecutive slices larger than 1.5x the median spacing."""


class NonUniformSpacingError(InputError):
    """Slice spacing varies along the scan beyond tolerance."""


class GantryTiltError(InputError):
    """The slices are acquired with a tilted gantry (sheared volume)."""


class NotHUError(InputError):
    """The values do not look like Hounsfield units (e.g. raw unsigned values with no rescale)."""


class InvalidValuesError(InputError):
    """The image holds NaN or infinite values."""


class AbsurdSizeError(InputError):
    """The image size or spacing is outside anything a chest CT can be."""


class MemoryLimitError(AbsurdSizeError):
    """Reading the image would need more memory than the machine has (checked before allocating)."""


class GeometryError(InputError):
    """Spacing, slice positions or orientation are missing, zero or malformed: sscild never invents geometry."""


class NonAxialError(GeometryError):
    """The slices are coronal, sagittal or oblique; sscild measures axial series (resample first)."""


class CorruptFileError(UnreadableInputError):
    """One file of an otherwise readable series is corrupt or truncated."""


class SeriesChoiceError(InputError):
    """Several CT series could be the scan and the documented rule cannot decide (or ``--series`` names none)."""


# --- outputs ---------------------------------------------------------------------------------
class OutputError(SscildError):
    """The output folder cannot be used (a file, not writable, empty name, disk full, holds other files)."""


# --- anatomy ---------------------------------------------------------------------------------
class NoLungsError(SscildError):
    """No lungs were found in the scan (not a chest CT, or lungs outside the field of view)."""


# --- models, configs, data -------------------------------------------------------------------
class ModelError(SscildError):
    """A model's weights or card are missing, corrupt, or do not fit the network they are loaded into."""


class ModelMissingError(ModelError):
    """No weights at all where a model was looked for: the stage is skipped with a warning. Every other
    ``ModelError`` (corrupt, tampered, unfit weights) stops the analysis: a damaged model must not score."""


class ConfigError(SscildError):
    """A configuration file or a data manifest is missing fields or holds bad values."""


class BatchLockedError(SscildError):
    """Another batch is running on the same output folder."""


class LabelMapError(SscildError):
    """A label map (e.g. a 3D Slicer .seg.nrrd) cannot be mapped to sscild's classes."""
