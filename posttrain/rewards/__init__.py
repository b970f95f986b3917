"""Rewards: components, their weighted sum, and the deadline pool that runs those that may hang.

``registry.build_reward`` turns the ``reward`` section into a scorer; ``base`` holds
the records (``ScoreReport``, ``Scorer``), ``isolate`` the deadline pool shared with
evaluation. This package imports nothing here: reward workers import its modules
and must stay free of torch.
"""
