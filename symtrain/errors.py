"""The one exception type for user mistakes.

Anything a user can fix by changing a config, a flag or a file raises :class:`SymtrainError`
with a single readable line that names the problem and the fix. The CLI prints that line and
exits with code 2 instead of showing a traceback.
"""


class SymtrainError(Exception):
    """A user-fixable problem (bad config, missing data, unwritable directory).

    Examples:
        >>> str(SymtrainError("data.root 'x' does not exist: pass --data.root DIR"))
        "data.root 'x' does not exist: pass --data.root DIR"
    """
