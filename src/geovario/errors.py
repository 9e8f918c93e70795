"""The exception types for problems the user can fix.

The CLI prints a :class:`GeovarioError` as a single line and exits non-zero; anything else is a
bug in geovario and keeps its traceback.
"""


class GeovarioError(Exception):
    """Bad input or a missing resource: the message names the file, row and problem."""


class ParameterError(GeovarioError):
    """A library argument out of range. The message names the Python parameter (``top_k must be ...``);
    the CLI prints it under the option it came from (``--top-k must be ...``)."""

    def __init__(self, parameter: str, problem: str):
        self.parameter, self.problem = parameter, problem
        super().__init__(f"{parameter} {problem}")

    def as_option(self) -> str:
        return f"--{self.parameter.replace('_', '-')} {self.problem}"


class GeovarioWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as one
    ``geovario: warning: ...`` line."""
