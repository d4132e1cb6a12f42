"""One trainer for every registered policy (``Policy.compute_loss`` is all it needs).

AdamW (the policy's ``optim_groups`` if it has them) + warm-up/cosine LR, EMA, gradient
clipping, mixed precision and multi-GPU / multi-node through ``accelerate`` (the same script
on one CPU process or under ``accelerate launch``), exact resume, JSONL metrics, periodic
simulation rollouts. Run-directory layout: see :mod:`robopolicy.train.checkpoint`, plus
``train_config.yaml``, ``run.json``, ``metrics.jsonl``, ``eval/step_<n>/`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from robopolicy.interrupts import GracefulStop, defer_interrupts
from robopolicy.policy import Policy
from robopolicy.train import checkpoint as ckpt
from robopolicy.train.config import TrainConfig, save_train_config
from robopolicy.train.data import make_loader, make_train_sampler
from robopolicy.train.ema import EMA
from robopolicy.train.logging import MetricsLogger
from robopolicy.train.schedule import make_optimizer, make_scheduler

EvalFn = Callable[[Policy, int, Path], dict[str, Any]]


class _LossModule(nn.Module):
    """``forward(batch) = policy.compute_loss(batch)``, so DDP sees a forward call."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy.compute_loss(batch)


def make_accelerator(config: TrainConfig):
    """``accelerate.Accelerator`` for ``config.device`` / ``config.mixed_precision``."""
    from accelerate import Accelerator

    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    cpu = config.device == "cpu" or not has_cuda
    if cpu and config.mixed_precision == "fp16":
        raise ValueError("mixed_precision 'fp16' needs a GPU; use 'bf16' or 'no' on CPU")
    return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    """Trains ``policy`` on ``train_set``; see :meth:`fit`.

    ``eval_fn(policy, step, out_dir) -> report`` runs rollouts every ``config.eval_every`` steps;
    its ``success_rate`` decides ``RUN_DIR/best``. The trainer never imports the evaluation
    code: the caller (CLI / run layer) builds the callback, e.g. with
    :func:`robopolicy.eval.training.make_eval_fn`.
    """

    def __init__(
        self,
        config: TrainConfig,
        policy: Policy,
        train_set: torch.utils.data.Dataset,
        run_dir: str | Path,
        *,
        val_set: torch.utils.data.Dataset | None = None,
        accelerator: Any = None,
        progress: bool = True,
        eval_fn: EvalFn | None = None,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.acc = accelerator if accelerator is not None else make_accelerator(config)
        self.main = self.acc.is_main_process
        self.progress = progress and self.main
        self.run_info = run_info or {}
        if config.eval_every > 0 and eval_fn is None:
            raise ValueError(
                "eval_every > 0 needs an evaluation callback: pass eval_fn (the CLI builds one from the "
                "eval_* fields with robopolicy.eval.training.make_eval_fn)"
            )
        self.eval_fn = eval_fn
        self.policy = policy
        self.optimizer = make_optimizer(policy, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.loss_module, self.optimizer = self.acc.prepare(_LossModule(policy), self.optimizer)
        self.ema = EMA(policy, config.ema) if config.ema.enabled else None
        world, rank = self.acc.num_processes, self.acc.process_index
        if world > 1:  # distinct noise per process (the weights are broadcast from rank 0 by DDP)
            seed_everything(config.seed + rank)
        self.sampler = make_train_sampler(train_set, config, rank, world)
        self.loader = make_loader(train_set, self.sampler, config.batch_size, config.num_workers, config.seed)
        self.val_loader = (
            make_loader(val_set, None, config.batch_size, 0, config.seed, drop_last=False) if val_set else None
        )
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.wall_before = 0.0
        self.best: dict[str, Any] | None = None
        self.evals: list[dict[str, Any]] = []
        self.last_metrics: dict[str, float] = {}
        self._window: dict[str, list[float]] = defaultdict(list)
        self.logger = MetricsLogger(self.run_dir, enabled=self.main)

    # ------------------------------------------------------------------ public
    @property
    def deploy_policy(self) -> Policy:
        """The weights a checkpoint deploys: the EMA average, or the raw model without EMA."""
        return self.ema.averaged if self.ema is not None else self.policy

    def fit(self, resume: bool = False, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``config.num_steps`` (resuming from the run directory's newest checkpoint
        if ``resume``); returns the summary also written to ``RUN_DIR/summary.json``.

        ``stop_at`` ends this session early after that step (time-boxed sessions, tests); the
        LR schedule still spans ``num_steps`` and a later ``resume`` continues the same run.
        """
        resumed_from = self.resume() if resume else None
        self._write_run_files()
        t0, step0 = time.perf_counter(), self.step
        bar = tqdm(total=self.config.num_steps, initial=self.step, disable=not self.progress, desc="train")
        batches = self._batches()
        interrupted = timed_out = False
        limit = self.config.time_limit_minutes
        try:
            with GracefulStop("training", "the end of this step (a checkpoint is saved)") as stop:
                end = min(self.config.num_steps, stop_at or self.config.num_steps)
                while self.step < end:
                    metrics = self.train_step(next(batches))
                    self.step += 1
                    bar.update(1)
                    for k, v in metrics.items():
                        self._window[k].append(v)
                    saved = self._after_step(bar, t0, step0)
                    if self._stop_requested(stop):
                        interrupted = self.step < end
                        if not saved:
                            self.save_checkpoint()
                        break
                    if limit is not None and self.step < end and self._time_is_up(t0, limit):
                        timed_out = True
                        if not saved:
                            self.save_checkpoint()
                        break
        finally:
            bar.close()
        wall = time.perf_counter() - t0
        summary = self._summary(wall, self.step - step0, resumed_from)
        summary["interrupted"] = interrupted
        summary["time_limit_reached"] = timed_out
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.logger.close()
        return summary

    def _time_is_up(self, t0: float, minutes: float) -> bool:
        """The session's time limit passed (decided by the main process for all processes)."""
        up = time.perf_counter() - t0 >= 60.0 * minutes
        if self.acc.num_processes == 1:
            return up
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([up], from_process=0)[0])

    def _stop_requested(self, stop: GracefulStop) -> bool:
        """Ctrl-C seen (by the main process, so that every process stops at the same step)."""
        if self.acc.num_processes == 1:
            return stop.requested
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([stop.requested], from_process=0)[0])

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimizer step; returns float metrics (loss, lr, grad_norm, policy metrics)."""
        self.loss_module.train()
        batch = _to_device(batch, self.acc.device)
        with self.acc.autocast():
            loss, metrics = self.loss_module(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
        self.acc.backward(loss)
        out = {"loss": float(loss.detach()), "lr": self.scheduler.get_last_lr()[0]}
        if self.config.grad_clip_norm:
            out["grad_norm"] = float(self.acc.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            out["ema_decay"] = self.ema.update(self.policy)
        out.update({k: float(v) for k, v in (metrics or {}).items() if k != "loss"})
        return out

    def validate(self) -> dict[str, float]:
        """Mean ``compute_loss`` of the deployed weights over ``config.val_batches`` batches."""
        if self.val_loader is None or self.config.val_batches == 0:
            return {}
        policy, losses = self.deploy_policy, []
        was_training = policy.training
        policy.eval()
        state = ckpt.rng_state()
        torch.manual_seed(self.config.seed)
        try:
            for i, batch in enumerate(self.val_loader):
                if i >= self.config.val_batches:
                    break
                with self.acc.autocast(), policy.inference_mode():  # the policy owns its grad mode
                    loss, _ = policy.compute_loss(_to_device(batch, self.acc.device))
                losses.append(float(loss))
        finally:
            ckpt.set_rng_state(state)
            policy.train(was_training)
        return {"loss": float(np.mean(losses))} if losses else {}

    def evaluate(self) -> dict[str, Any] | None:
        """Rollouts of the deployed policy (main process); updates ``best``."""
        if not self.main:
            return None
        state = ckpt.rng_state()
        try:
            report = self.eval_fn(self.deploy_policy, self.step, self.run_dir / "eval" / f"step_{self.step}")
        finally:
            ckpt.set_rng_state(state)
        rate = float(report["success_rate"])
        entry = {
            "step": self.step,
            "success_rate": rate,
            "ci95": report.get("ci95"),
            "episodes": report.get("episodes"),
        }
        self.evals.append(entry)
        self.logger.log(self.step, {k: v for k, v in entry.items() if k != "step"}, prefix="eval")
        if self.best is None or rate > self.best["success_rate"]:
            self.best = entry
        return report

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_<n>`` and move ``latest`` (and ``best``) to it (a Ctrl-C
        during the write is held until it is complete)."""
        d = ckpt.step_dir(self.run_dir, self.step)
        self.acc.wait_for_everyone()
        if self.main:
            with defer_interrupts():
                self._write_checkpoint(d)
        self.acc.wait_for_everyone()
        return d

    def _write_checkpoint(self, d: Path) -> None:
        self.deploy_policy.save(d / "policy")
        ckpt.save_train_state(d / "train_state", self.policy, self._train_state())
        ckpt.point(self.run_dir / "latest", d / "policy")
        if self.best is not None and self.best["step"] == self.step:
            ckpt.point(self.run_dir / "best", d / "policy")
        best = ckpt.step_dir(self.run_dir, self.best["step"]) if self.best else None
        ckpt.prune(self.run_dir, self.config.keep_checkpoints, (best,) if best else ())

    def resume(self) -> int | None:
        """Restore the newest complete checkpoint of the run directory; returns its step."""
        d = ckpt.latest_complete(self.run_dir)
        if d is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.run_dir / 'checkpoints'}")
        state = ckpt.load_train_state(d / "train_state", self.policy)
        deployed = Policy.load(d / "policy", device=self.acc.device)
        self.policy.normalizer = deployed.normalizer
        if self.ema is not None:
            self.ema.averaged.load_state_dict(deployed.state_dict())
            self.ema.averaged.normalizer = deployed.normalizer
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.wall_before = float(state["wall_time_s"])
        self.best = json.loads(state["best"]) if state.get("best") else None
        self.evals = json.loads(state.get("evals", "[]"))
        self.policy.load_training_carry(state.get("policy_carry") or {})
        if self.acc.process_index == 0:
            ckpt.set_rng_state(state["rng"])
        else:  # only the main process saves its RNG; the others get fresh, distinct streams
            seed_everything(self.config.seed + 1_000_003 * self.acc.process_index + self.step)
        return self.step

    def _train_state(self) -> dict[str, Any]:
        consumed = self.batches_in_epoch * self.config.batch_size * self.acc.num_processes
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "sampler": self.sampler.state_dict(consumed),
            "rng": ckpt.rng_state(),
            "wall_time_s": self.wall_before + (time.perf_counter() - self._t_start),
            "best": json.dumps(self.best) if self.best else "",
            "evals": json.dumps(self.evals),
            "policy_carry": {k: v.detach().cpu() for k, v in self.policy.training_carry().items()},
        }

    # ------------------------------------------------------------------ loop pieces
    def _batches(self) -> Iterator[Any]:
        while True:
            for batch in self.loader:
                self.batches_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batches_in_epoch = 0

    def _after_step(self, bar: tqdm, t0: float, step0: int) -> bool:
        """Log, evaluate and checkpoint as the config says; True if a checkpoint was saved."""
        c, s = self.config, self.step
        last = s == c.num_steps
        if s % c.log_every == 0 or last:
            rate = (s - step0) * c.batch_size * self.acc.num_processes / max(time.perf_counter() - t0, 1e-9)
            self.last_metrics = {k: float(np.mean(v)) for k, v in self._window.items()}
            self._window.clear()
            self.last_metrics["samples_per_s"] = rate
            self.logger.log(s, {**self.last_metrics, "epoch": self.epoch})
            bar.set_postfix(loss=f"{self.last_metrics['loss']:.4f}", samples_s=f"{rate:.0f}")
        new_best = False
        if c.eval_every > 0 and (s % c.eval_every == 0 or last):
            evaluated = self.evaluate() is not None  # main process only
            new_best = evaluated and self.best is not None and self.best["step"] == s
            if self.acc.num_processes > 1:  # every process must take the same checkpoint branch
                from accelerate.utils import broadcast_object_list

                new_best = bool(broadcast_object_list([new_best], from_process=0)[0])
        if s % c.checkpoint_every == 0 or last or new_best:
            val = self.validate()
            if val:
                self.last_metrics["val_loss"] = val["loss"]
                self.logger.log(s, val, prefix="val")
            self.save_checkpoint()
            return True
        return False

    def _write_run_files(self) -> None:
        self._t_start = time.perf_counter()
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_train_config(self.config, self.run_dir / "train_config.yaml")
        info = {**self.run_info, "policy": self.policy.name, "num_processes": self.acc.num_processes}
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2))

    def _summary(self, wall: float, steps: int, resumed_from: int | None) -> dict[str, Any]:
        rate = steps * self.config.batch_size * self.acc.num_processes / max(wall, 1e-9)
        latest = self.run_dir / "latest"
        return {
            "steps": self.step,
            "steps_this_session": steps,
            "resumed_from": resumed_from,
            "wall_time_s": round(self.wall_before + wall, 3),
            "wall_time_this_session_s": round(wall, 3),
            "samples_per_s": round(rate, 2),
            "steps_per_s": round(steps / max(wall, 1e-9), 3),
            "final_loss": _finite(self.last_metrics.get("loss")),
            "final_val_loss": _finite(self.last_metrics.get("val_loss")),
            "eval": self.evals,
            "best": self.best,
            "latest_policy": str(latest.resolve()) if latest.exists() else None,
            "device": str(self.acc.device),
            "num_processes": self.acc.num_processes,
            "mixed_precision": self.config.mixed_precision,
        }


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
