"""The exceptions the launchers turn into a message without a traceback: `UserError` for
mistakes a user can fix (bad data, bad flags, wrong workdir), exit status 2; `Interrupted` for a
run stopped by a signal after saving, exit status 128 + the signal's number. Anything else is a
bug."""


class UserError(Exception):
    """A problem with the user's input. The message names the problem and the fix."""


class Interrupted(Exception):
    """Training stopped by a signal (SIGTERM from a cluster's scheduler, SIGINT from Ctrl-C)
    after every run in training was saved at its current step."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum
