"""Module robustness sensitivity, in pipeline order: ``units`` (what can be pruned together) -> ``cost`` (what a
channel costs after removal) -> ``calibration`` (adversarial samples) -> ``sensitivity`` (MRS estimators) ->
``allocation`` (the budget solver) -> ``allocator`` (MRS allocator) -> ``pruner`` (``MRSPruner``) and
``baselines`` (the same budget without MRS)."""
