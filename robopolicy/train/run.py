"""Entry point of a training run: data -> policy -> :class:`~robopolicy.train.trainer.Trainer`.

``train(config, data, out)`` is what ``robopolicy train`` and the quick start call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robopolicy.policy import Policy, get_policy_class
from robopolicy.train.config import TrainConfig, load_train_config
from robopolicy.train.data import build_datasets, build_policy_config, check_finite, open_store, specs_from_store
from robopolicy.train.trainer import EvalFn, Trainer, make_accelerator, seed_everything


def build_policy(config: TrainConfig, store: Any) -> tuple[Policy, Any, Any]:
    """A fresh policy (seeded init, fitted normalizer) and the datasets its config's data
    windows declare over ``store``."""
    policy_cls = get_policy_class(config.policy_name)
    obs_spec, action_spec = specs_from_store(store, config)
    policy_config = build_policy_config(policy_cls, config.policy_fields(), obs_spec, action_spec)
    check_finite(store, [*config.obs_keys, config.action_key])
    train_set, val_set = build_datasets(store, config, policy_config.data_windows())
    seed_everything(config.seed)
    policy = policy_cls(policy_config)
    policy.fit_normalizer(train_set.fields_for_normalizer())
    return policy, train_set, val_set


def train(
    config: TrainConfig | None,
    data: str | Path | None,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
    eval_fn_factory: Callable[[TrainConfig], EvalFn] | None = None,
) -> dict[str, Any]:
    """Train a policy on the store at ``data`` into run directory ``out``; returns the summary.

    With ``resume=True`` the run continues from ``out``'s newest checkpoint; ``config`` and
    ``data`` then default to the ones the run was started with. ``eval_fn_factory(config)``
    builds the periodic-evaluation callback (needed when ``config.eval_every > 0``; the CLI
    passes :func:`robopolicy.eval.training.make_eval_fn`).
    """
    out = Path(out)
    if resume:
        config, data = _resume_inputs(out, config, data, overrides)
    if config is None or data is None:
        raise ValueError("train() needs a config and a data path (or resume=True on an existing run)")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(config.seed)
    accelerator = make_accelerator(config)
    policy, train_set, val_set = build_policy(config, open_store(str(data)))
    info = {"data": str(Path(data).resolve()), "train_samples": len(train_set)}
    info["val_samples"] = len(val_set) if val_set is not None else 0
    trainer = Trainer(
        config,
        policy,
        train_set,
        out,
        val_set=val_set,
        accelerator=accelerator,
        progress=progress,
        run_info=info,
        eval_fn=eval_fn_factory(config) if eval_fn_factory is not None and config.eval_every > 0 else None,
    )
    return trainer.fit(resume=resume)


def _resume_inputs(out: Path, config: TrainConfig | None, data: Any, overrides: Any) -> tuple:
    if not out.is_dir():
        raise FileNotFoundError(f"--resume: run directory {out} does not exist")
    if not (out / "train_config.yaml").is_file():
        raise ValueError(f"--resume: {out} is not a run directory (it has no train_config.yaml)")
    if config is None:
        config = load_train_config(out / "train_config.yaml", overrides)
    if data is None:
        run = out / "run.json"
        if not run.is_file():
            raise FileNotFoundError(f"--resume: {run} is missing; pass --data")
        data = json.loads(run.read_text())["data"]
    return config, data
