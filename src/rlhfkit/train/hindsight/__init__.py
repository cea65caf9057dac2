"""Hindsight methods: learn from feedback by rewriting what a sample is evidence for.

One training loop per file, each a ``Config`` and ``main`` run by ``rlhfkit hindsight --method``:
``coh`` (Chain of Hindsight), ``hir`` (Hindsight Instruction Relabeling), ``relabel`` (goal
relabelling), ``foresight`` (hindsight + foresight in one objective) and ``rlhs`` (feedback after
simulated outcomes). Their losses live in ``rlhfkit.losses.hindsight``.
"""
