"""Errors meant for the user: launch.py prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or missing resource that the user can fix; the message says what and how."""


class ConfigError(UserError):
    """A config file or override is invalid (unknown key, wrong type, unknown plugin)."""


class MissingModelError(UserError):
    """One or more pretrained models are not available locally."""
