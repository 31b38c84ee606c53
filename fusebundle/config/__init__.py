"""The plan: a LinuxKit-style YAML, validated and merged, and what the reference writes from it.

`load`: YAML -> `Config`; `schema`: validation of one container entry or image label (2017's
keys and today's); `runtime`: config.json and runtime.json, as the reference's
ConfigInspectToOCI; `metadata`: `files: metadata:`, the merged config as moby marshals it.
"""

from fusebundle.config.load import Config, Container, FileSpec, Volume, load_config

__all__ = ["Config", "Container", "FileSpec", "Volume", "load_config"]
