"""The one exception type the CLI turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user (unknown name, invalid parameter, missing data, unreadable file)."""
