"""The one exception type for problems the user can fix.

The CLI prints a :class:`GeovarioError` as a single line and exits non-zero; anything else is a
bug in geovario and keeps its traceback.
"""


class GeovarioError(Exception):
    """Bad input or a missing resource: the message names the file, row and problem."""
