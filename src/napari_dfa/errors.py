"""One exception family for the package: every message names the file and says what to do."""

from __future__ import annotations


class DFAError(Exception):
    """Base class of every error napari-dfa raises on purpose."""


class SlideError(DFAError):
    """A slide cannot be opened or one of its tiles cannot be read."""


class CheckpointError(DFAError):
    """A model file is missing, foreign (e.g. a pickle), malformed or incompatible."""


class ConfigError(DFAError):
    """A configuration (TOML recipe, CLI flags, model preset) is invalid."""


class DataError(DFAError):
    """A dataset, mask or correction is malformed (wrong shape, unknown class id, ...)."""


class Cancelled(DFAError):
    """Long work was cancelled by the user; what was written so far is kept."""
