"""Errors that reach users as one sentence (what is wrong and how to fix it), never a traceback."""


class UserError(Exception):
    """Input the user can fix: a missing folder, a mismatched channel count, a bad argument."""
