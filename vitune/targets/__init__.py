"""Hardware targets: profiles (TOML files), the TVM compile path, and runners that time builds.

Light to import: TVM is imported only by :mod:`vitune.targets.compile` and the runners.
"""

from vitune.targets.profile import TargetProfile, list_targets, load_target

__all__ = ["TargetProfile", "load_target", "list_targets"]
