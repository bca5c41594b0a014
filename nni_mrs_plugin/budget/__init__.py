"""The method-neutral budget core, in pipeline order: ``units`` (what can be pruned together) -> ``cost`` (what a
channel costs after removal) -> ``problem`` (``BudgetProblem``: measure and meet a global target) -> ``report``
(``Allocation``) -> ``pruner`` (``BudgetPruner``, the NNI ``Pruner`` every budget pruner subclasses) and
``baselines`` (uniform, random and global-L1 pruners on it)."""
