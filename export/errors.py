"""The error every export failure raises before anything is written."""


class ExportError(ValueError):
    """A model, option or traced graph the exporter refuses; the message names the fix."""
