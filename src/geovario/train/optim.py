"""The optimiser, its parameter groups and the learning-rate schedule a config's ``optim`` section asks for."""

from __future__ import annotations

import math

import torch

from geovario.config import OptimSection


def parameter_groups(model: torch.nn.Module, weight_decay: float, decay_weights_only: bool) -> list[dict]:
    """One group with ``weight_decay`` for all, or (``decay_weights_only``) one for the weight matrices and one,
    without decay, for biases, norm layers and the logit scale (open_clip's rule: fewer than 2 dimensions)."""
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not decay_weights_only:
        return [{"params": [p for _, p in trained], "weight_decay": weight_decay}]
    decayed = lambda name, p: p.ndim >= 2 and "logit_scale" not in name  # noqa: E731
    return [{"params": [p for name, p in trained if decayed(name, p)], "weight_decay": weight_decay},
            {"params": [p for name, p in trained if not decayed(name, p)], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """GeoCLIP's Adam (weight decay added to the gradient, as torch.optim.Adam does)."""
    return torch.optim.Adam(parameter_groups(model, optim.weight_decay, optim.decay_weights_only), lr=optim.lr)


def cosine_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """The rate of optimizer step ``step`` (0-based) as a fraction of the peak: (step + 1) / warmup during the
    warmup, then half a cosine from 1 down to ``floor`` (min_lr / lr), reached at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Schedule:
    """The scheduler and when it steps: after every epoch (``step``) or after every optimizer step (``cosine``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, optim: OptimSection, total_steps: int):
        self.per_step = optim.schedule == "cosine"
        if self.per_step:
            floor, warmup = optim.min_lr / optim.lr, optim.warmup_steps

            def factor(step: int) -> float:
                return cosine_factor(step, warmup, total_steps, floor)

            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=optim.step_gamma)

    def after_step(self, end_of_epoch: bool) -> None:
        if self.per_step or end_of_epoch:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
