"""Errors a user can cause: each becomes one line on stderr and a non-zero exit."""


class UserError(Exception):
    """A problem with the input or the environment, reported as one line."""

    exit_code = 1


class ConfigError(UserError):
    """The YAML (or an image label) is malformed or invalid."""

    exit_code = 2


class EngineError(UserError):
    """The Docker engine is unreachable or refused a request."""


class CorruptTar(UserError):
    """A tar (usually a cached image export) is corrupt, truncated or hostile."""
