"""Error types whose message is shown to the user as one line (the CLI never prints a traceback for them)."""


class MelanomaError(Exception):
    """Base class: the message is a complete, one-line explanation naming the file or value at fault."""


class DataError(MelanomaError):
    """A dataset, manifest or label problem (missing file, empty class, unknown label...)."""


class ImageError(DataError):
    """One image file cannot be used (corrupt, truncated, not an image, too large...)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelError(MelanomaError):
    """A model name, weights file or model artifact problem."""


class ConfigError(MelanomaError):
    """An invalid configuration value or command-line combination."""


class MelanomaWarning(UserWarning):
    """A result that is valid but needs the user's attention; the CLI prints it as one `warning: ...` line."""


class ThresholdWarning(MelanomaWarning):
    """An alert threshold chosen on too few melanomas, or on images the model was trained on."""
