"""Error types shown to users.

Every error a user can cause (a bad study file, an unknown layer, an impossible rank, an
unknown target) is a :class:`VituneError` whose message is one line naming *what* is wrong
and *where* (file, key, layer). The CLI prints the message alone, without a traceback.
"""


class VituneError(Exception):
    """Base class for errors that are the user's to fix; ``str(err)`` is one actionable line."""


class ConfigError(VituneError):
    """A configuration value (study file, target file, per-layer config, CLI flag) is invalid."""


def short_reason(err: BaseException) -> str:
    """``Type: last line of the message`` (at most 500 characters): an exception as one line."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:500]
