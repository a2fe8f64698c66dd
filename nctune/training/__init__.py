"""What trains and how: the strategy registry, the loop (``fit``), its batch sources, the
frozen-prefix cache, optimisers and schedules, checkpoints and metric loggers.

Modules are imported by their own path (``nctune.training.train``); this package imports
nothing, so ``import nctune.training.strategies`` does not pull in the loop.
"""
