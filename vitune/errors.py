"""Error types shown to users.

Every error a user can cause (a bad study file, an unknown layer, an impossible rank, an
unknown target) is a :class:`VituneError` whose message is one line naming *what* is wrong
and *where* (file, key, layer). The CLI prints the message alone, without a traceback.
"""


class VituneError(Exception):
    """Base class for errors that are the user's to fix; ``str(err)`` is one actionable line."""


class ConfigError(VituneError):
    """A configuration value (study file, target file, per-layer config, CLI flag) is invalid."""


def message_line(err: BaseException | str, last: bool = True) -> str:
    """One line of an exception's message (or of a tool's output): the last non-blank line, where
    errors from TVM, LLVM and compilers put the cause, or the first (``last=False``: SQLAlchemy,
    timm). Never empty: an exception with no message gives its type's name."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if lines:
        return lines[-1] if last else lines[0]
    return type(err).__name__ if isinstance(err, BaseException) else ""


def short_reason(err: BaseException) -> str:
    """``Type: last line of the message`` (at most 500 characters): an exception as one line."""
    return f"{type(err).__name__}: {message_line(err) if str(err).strip() else ''}"[:500]
