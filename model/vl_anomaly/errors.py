"""Exceptions raised by vl_anomaly. Every message says what was wrong and what is accepted."""


class VLAnomalyError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidImageError(VLAnomalyError, ValueError):
    """An input image (array or file) cannot be used: wrong dtype, channels, size, values or file content."""


class WeightsError(VLAnomalyError, RuntimeError):
    """Model weights are missing, corrupt, of the wrong hash, or do not fit the architecture."""


class ConfigError(VLAnomalyError, ValueError):
    """A model name, score name, parameter or configuration value is not valid."""
