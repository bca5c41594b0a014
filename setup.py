"""Ship ``nni_mrs_plugin.pth`` beside the package (regular and editable installs alike).

The .pth file imports ``nni_mrs_plugin`` at interpreter start; its ``__init__`` imports only the standard
library and ``compat``, which registers import hooks that repair NNI 3.0 on current PyTorch the moment
NNI's tracer is imported, so existing NNI scripts run unchanged. NNI_MRS_PLUGIN_NO_AUTOLOAD=1 skips the
start-up import; NNI_MRS_PLUGIN_SKIP_FIXES=all switches the fixes off.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "nni_mrs_plugin.pth"
# once per process: some Pythons (pyenv's 3.11 in a venv) process site-packages' .pth files twice
PTH_LINE = (
    "import os, sys; os.environ.get('NNI_MRS_PLUGIN_NO_AUTOLOAD', '0') in ('', '0') and "
    "not hasattr(sys, '_nni_mrs_pth') and "
    "exec(\"sys._nni_mrs_pth = 1\\ntry:\\n import nni_mrs_plugin\\nexcept Exception as e:\\n"
    " sys.stderr.write('nni-mrs-plugin: NNI compat hooks not installed: %s\\\\n' % e)\")\n"
)


def write_pth(folder: str) -> str:
    path = os.path.join(folder, PTH_NAME)
    with open(path, "w") as f:
        f.write(PTH_LINE)
    return path


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            write_pth(self.build_lib)

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [os.path.join(self.build_lib, PTH_NAME)]


class EditableWheelWithPth(editable_wheel):
    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        write_pth(installation_dir)


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
