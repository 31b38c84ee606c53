"""Errors a user can cause: each becomes one line on stderr and a non-zero exit.

`cli.commands.main` catches `UserError` and prints `fusebundle: <message>`; the exit status is
the class's `exit_code`.  The tree (classes below the line live beside the code that raises
them, so that each stage names its own failures):

    UserError                       exit 1: the input or the environment
    ├── ConfigError                 exit 2: the YAML, a label, a flag's value
    ├── EngineError                 the Docker engine is unreachable or refused
    ├── CorruptTar                  a tar (export, layer, archive) is corrupt or hostile
    ├── ─────────────────────────
    ├── sources.base.NotFound       this source does not have the image
    ├── sources.regauth.RegistryError   a registry refused, failed or sent something wrong
    │   └── sources.regauth.Denied      401/403 from the registry or its token service
    └── store.StoreError            the store cannot be read or written
        ├── store.BadLayer          a layer blob failed its checks (digests, compression, tar)
        └── store.CorruptLayer      a stored layer no longer hashes to its diff_id (removed)

Anything else is a bug: one "internal error" line and exit 70 (`--debug` shows the traceback).
"""


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
