"""Errors a user can act on.

Every error raised for bad input is a `FacekdError` whose message names the file, field or
parameter at fault and what was expected; the command line prints it without a traceback.
"""


class FacekdError(Exception):
    """A problem with the user's input or configuration, described for the user."""


class CorruptImageError(FacekdError):
    """An image that cannot be decoded; names the file or record it came from."""


class ProvenanceMismatchError(FacekdError):
    """A store or index was built from other inputs than the ones requested."""
