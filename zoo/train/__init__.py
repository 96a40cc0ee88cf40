"""Training: a run's setup and stage sequence (``run``), the one training loop (``loop``), the objective's loss
terms (``objective``), the rows and batches (``rows``), the learning-rate schedule (``schedule``) and the report
(``report``)."""

from zoo.train.loop import StopRun, train_phase
from zoo.train.objective import DistillModule, LossTerm, register_loss_term
from zoo.train.report import evaluate_folder
from zoo.train.run import Run, distill

__all__ = [
    "DistillModule",
    "LossTerm",
    "Run",
    "StopRun",
    "distill",
    "evaluate_folder",
    "register_loss_term",
    "train_phase",
]
