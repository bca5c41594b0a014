"""Imported at interpreter start by ``nni_mrs_plugin.pth``: installs the NNI compat hooks (stdlib only, no torch).

Set NNI_MRS_PLUGIN_NO_AUTOLOAD=1 to skip this; the fixes then apply on ``import nni_mrs_plugin`` only.
"""
import os

if os.environ.get("NNI_MRS_PLUGIN_NO_AUTOLOAD", "") in ("", "0"):
    import nni_mrs_plugin  # noqa: F401  (its import installs the hooks)
