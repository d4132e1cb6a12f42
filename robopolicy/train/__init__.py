"""Training: one trainer for every registered policy (see :mod:`robopolicy.train.trainer`)."""

from robopolicy.train.config import EMAConfig, TrainConfig, load_train_config
from robopolicy.train.run import train
from robopolicy.train.trainer import Trainer

__all__ = ["EMAConfig", "TrainConfig", "Trainer", "load_train_config", "train"]
