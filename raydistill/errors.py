"""Errors a user can cause. The CLI prints their message alone, without a traceback."""


class UserError(Exception):
    """Bad input from the user: a path, a name, a value. The message names the problem and the fix."""
