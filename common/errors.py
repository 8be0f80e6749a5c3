"""One error type for every problem a user can fix: the CLI prints it as one line, no traceback."""


class BenchError(Exception):
    """A user-facing error: the message says what is wrong, where, and how to fix it."""
