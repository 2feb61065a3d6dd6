"""The one exception type for mistakes a user can fix (bad data, bad flags, wrong workdir).

Launchers catch `UserError` and print its message without a traceback; anything else is a bug.
"""


class UserError(Exception):
    """A problem with the user's input. The message names the problem and the fix."""
