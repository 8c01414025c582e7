"""Errors that reach a user as one line, never a traceback."""


class UserError(Exception):
    """Bad input from a user: printed as one line by the CLI, exit status 2."""


class RunError(UserError):
    """A path that is not a readable collapsewatch run (missing, not a run, newer schema)."""
