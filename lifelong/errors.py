"""Typed errors: every message says what went wrong and what to do about it."""


class LifelongError(Exception):
    """Base class for errors a user can act on."""


class InvalidImageError(LifelongError):
    """A file is not a usable image (not an image, corrupt, unsupported)."""


class ImageCountError(LifelongError):
    """Too few or too many images for one concept."""


class InvalidConceptNameError(LifelongError):
    """A concept name is empty, unsafe or not allowed."""


class DuplicateConceptError(LifelongError):
    """A concept with this name is already in the session."""


class SessionFormatError(LifelongError):
    """A file or folder is not a Lifelong Studio session (or is damaged)."""


class CheckpointError(LifelongError):
    """A checkpoint index does not exist in the session."""


class InvalidPromptError(LifelongError):
    """A prompt is empty or names a concept the session does not know."""


class UnknownMethodError(LifelongError):
    """A method name is not known."""


class IncompatibleMethodsError(LifelongError):
    """Methods combined with ``+`` that cannot work together (e.g. different trainable kinds)."""


class InvalidSettingError(LifelongError):
    """A setting (a config field or a method's setting) is unknown, of the wrong type or out of bounds."""


class SessionFullError(LifelongError):
    """The session has no free concept slot left."""


class Cancelled(LifelongError):
    """A job (a learn, a forgetting comparison) was cancelled; the session is as it was before."""


class LimitError(InvalidSettingError):
    """A request asks for more than this app allows: a config field outside its bounds (``configs.check``),
    or settings whose expected cost is over the app's budget (``limits.Budget``). An InvalidSettingError,
    so callers that catch bad settings catch these too."""


class ExportError(LifelongError):
    """What was asked to export does not exist, or cannot be written in the asked format."""


class LoraImportError(LifelongError):
    """A LoRA or embedding file made elsewhere cannot become a concept of this session (not a LoRA we can
    read, another base model's shapes, layers a concept cannot hold)."""
