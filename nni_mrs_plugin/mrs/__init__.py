"""Module robustness sensitivity, in pipeline order, on the budget core (``budget/``): ``calibration``
(adversarial samples) -> ``curves`` and ``sensitivity`` (MRS estimators) -> the rules ``allocation`` (power),
``costaware`` (budget) and ``joint`` -> ``allocator`` (``MRSSparsityAllocator``) -> ``pruner`` (``MRSPruner``)."""
