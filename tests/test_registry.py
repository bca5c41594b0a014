"""Pruners by name (host/registry.py): built-ins, entry points, run-time registration with a spec the job reads,
and MRSPruner in NNI's own namespace."""
import inspect

import pytest
from conftest import run_python
from test_pipeline import tiny

from nni_mrs_plugin.job.config import ConfigError
from nni_mrs_plugin.job.pipeline import Pipeline
from nni_mrs_plugin.mrs.pruner import MRSPruner
from nni_mrs_plugin.host.registry import available_pruners, get_pruner, pruner_spec, register_pruner, unregister_pruner


def test_import_from_nni_pruning_in_a_fresh_interpreter():
    result = run_python("from nni.compression.pruning import MRSPruner, L1NormPruner\n"
                        "from nni.compression.base.compressor import Pruner\n"
                        "import nni_mrs_plugin\n"
                        "assert issubclass(MRSPruner, Pruner) and MRSPruner is nni_mrs_plugin.MRSPruner\n"
                        "print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_registry_names_and_entry_points(tmp_path):
    from nni_mrs_plugin.host.registry import available_pruners, get_pruner

    assert {"mrs", "l1", "l2", "fpgm", "taylor"} <= set(available_pruners())
    assert get_pruner("mrs") is MRSPruner
    with pytest.raises(ValueError, match="unknown pruner 'nope'; available: .*mrs"):
        get_pruner("nope")
    # a third-party package adds a name through the entry-point group
    (tmp_path / "thirdparty.py").write_text("from nni.compression.pruning import L1NormPruner\n"
                                            "class MyPruner(L1NormPruner):\n    pass\n")
    info = tmp_path / "thirdparty-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nni_mrs_plugin.pruners]\nmine = thirdparty:MyPruner\n")
    result = run_python("from nni_mrs_plugin.host.registry import get_pruner\nprint(get_pruner('mine').__name__)",
                        env_extra={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip() == "MyPruner", result.stderr[-2000:]


def test_every_builtin_spec_matches_its_class():
    """The registry spec is what the job reads; the class is what baseline_masks reads: they agree."""
    from nni_mrs_plugin import BudgetPruner

    for name in ("mrs", "l1", "l2", "fpgm", "taylor", "random", "l1-global", "harp"):
        spec, cls = pruner_spec(name), get_pruner(name)
        assert issubclass(cls, BudgetPruner) == (name in ("mrs", "l1-global", "harp", "random")), name
        params = inspect.signature(cls).parameters
        takes = "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        assert takes or not spec.takes_seed, name
    assert pruner_spec("taylor").needs_evaluator and not pruner_spec("l1").needs_evaluator


def test_the_config_s_options_reach_a_registered_nni_pruner_as_they_are(tmp_path):
    """The registry holds a class and two facts; the options come from the config, checked when it loads."""
    register_pruner("l1-magic", "nni.compression.pruning:L1NormPruner")
    try:
        assert "l1-magic" in available_pruners()
        with pytest.raises(ConfigError, match=r"^pruning.options.magic: L1NormPruner takes no option 'magic'; it "
                                              r"takes evaluator, existed_wrappers$"):
            tiny(tmp_path, pruning={"pruner": "l1-magic", "options": {"magic": 1}})
        config = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"pruner": "l1-magic"})
        assert Pipeline(config).run(until="prune")["stages"]["prune"]["pruner"] == "l1-magic"
    finally:
        unregister_pruner("l1-magic")


def test_old_package_name_is_the_host_package_with_one_warning():
    """``nni_mrs_plugin.nni`` (renamed ``host``) still imports for one release: the very same modules (one registry,
    one set of compat hooks), one FutureWarning naming the new path, and a name that never existed still fails."""
    code = (
        "import warnings, sys\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    from nni_mrs_plugin.nni.registry import get_pruner\n"
        "    from nni_mrs_plugin.nni import speedup\n"
        "    import nni_mrs_plugin.nni.compat\n"
        "import nni_mrs_plugin.host.registry as new\n"
        "assert get_pruner is new.get_pruner\n"
        "assert speedup is sys.modules['nni_mrs_plugin.host.speedup'] is sys.modules['nni_mrs_plugin.nni.speedup']\n"
        "assert speedup.__name__ == 'nni_mrs_plugin.host.speedup'\n"
        "print([str(w.message) for w in caught if w.category is FutureWarning])\n"
        "try:\n"
        "    import nni_mrs_plugin.nni.nothing\n"
        "except ModuleNotFoundError as e:\n"
        "    print('missing', e.name)\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['nni_mrs_plugin.nni was renamed nni_mrs_plugin.host; the old name goes in 0.2']"
    assert lines[1] == "missing nni_mrs_plugin.nni.nothing"
