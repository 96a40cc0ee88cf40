"""Training: a run's setup and stage sequence (``run``: ``distill``, ``Run``), the one training loop (``loop``:
``train_loop`` over a ``Phase``; ``train_phase`` builds a distillation stage's, ``zoo.teachers.fit`` a teacher's),
the objective's loss terms (``objective``: ``LossTerm``, ``register_loss_term``, ``DistillModule``), the run's
teachers (``teaching``), the rows and batches (``rows``), the learning-rate schedule (``schedule``) and the report
(``report``: ``measure``, ``evaluate_folder``).

Import from the submodules: the compression stages (``zoo.compress``) train through ``loop`` and are run by
``run``, so this package imports none of them itself.
"""
