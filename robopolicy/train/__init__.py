"""Training: one trainer for every registered policy (see :mod:`robopolicy.train.trainer`)."""

from robopolicy.train.config import EMAConfig, TrainConfig, load_train_config
from robopolicy.train.trainer import Trainer, train

__all__ = ["EMAConfig", "TrainConfig", "Trainer", "load_train_config", "train"]
