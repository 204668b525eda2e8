"""When to prune and how much: one-shot, linear, cubic (Zhu & Gupta 2017) and IMP rounds."""

from __future__ import annotations

from dataclasses import dataclass

from .config import PruningConfig


def cubic_sparsity(step: int, initial: float, final: float, start: int, span: int) -> float:
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune", eq. 1).

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt)) ** 3, for t in [t_0, t_0 + n * dt],
    where `span` is n * dt. Pruning fast while many redundant weights remain and slowly near the
    target lets the network recover between events.
    """
    progress = min(max((step - start) / span, 0.0), 1.0) if span > 0 else 1.0
    return final + (initial - final) * (1.0 - progress) ** 3


def linear_sparsity(step: int, initial: float, final: float, start: int, span: int) -> float:
    progress = min(max((step - start) / span, 0.0), 1.0) if span > 0 else 1.0
    return initial + (final - initial) * progress


@dataclass
class PruningSchedule:
    """A schedule resolved against the run's `max_steps`: the sparsity at each pruning step.

    `step` is the Trainer's `global_step` after which masks are updated (0: before the first step).
    For IMP, `sparsity_at` is the sparsity of round `step // steps_per_round`, and each pruning step
    is followed by rewinding the surviving weights.
    """

    kind: str
    target: float
    initial: float
    start_step: int
    end_step: int
    frequency: int
    rounds: int = 0
    steps_per_round: int = 0
    rewind_step: int = 0

    @property
    def prune_fraction_per_round(self) -> float:
        """IMP: fraction of the *remaining* weights each round removes, so R rounds reach the target."""
        return 1.0 - (1.0 - self.target) ** (1.0 / self.rounds)

    def pruning_steps(self) -> list[int]:
        if self.kind == "one_shot":
            return [self.start_step]
        if self.kind == "imp":
            return [self.steps_per_round * r for r in range(1, self.rounds + 1)]
        steps = list(range(self.start_step, self.end_step, self.frequency))
        return steps + [self.end_step]

    def is_pruning_step(self, step: int) -> bool:
        return step in self._steps

    def __post_init__(self):
        self._steps = set(self.pruning_steps())

    def sparsity_at(self, step: int) -> float:
        """Scheduled sparsity once the pruning event at `step` (if any) has run."""
        if self.kind == "one_shot":
            return self.target if step >= self.start_step else 0.0
        if self.kind == "imp":
            round_index = min(step // self.steps_per_round, self.rounds)
            return 1.0 - (1.0 - self.prune_fraction_per_round) ** round_index
        span = self.end_step - self.start_step
        if step < self.start_step:
            return 0.0
        formula = cubic_sparsity if self.kind == "cubic" else linear_sparsity
        return formula(step, self.initial, self.target, self.start_step, span)

    def describe(self) -> str:
        if self.kind == "imp":
            return (
                f"IMP: {self.rounds} rounds of {self.steps_per_round} steps, each pruning "
                f"{self.prune_fraction_per_round:.1%} of the remaining weights (at steps {self.pruning_steps()}), "
                f"rewinding to step {self.rewind_step}; final sparsity {self.target:.1%}"
            )
        if self.kind == "one_shot":
            return f"one-shot pruning to {self.target:.1%} at step {self.start_step}"
        return (
            f"{self.kind} pruning from {self.initial:.1%} at step {self.start_step} to {self.target:.1%} at step "
            f"{self.end_step}, every {self.frequency} steps ({len(self._steps)} pruning events)"
        )


def build_schedule(config: PruningConfig, max_steps: int) -> PruningSchedule:
    """Resolve the schedule against `max_steps`; defaults fit the run so the target is reached.

    Raises:
        ValueError: if the schedule would end after `max_steps` (the target would never be reached).
    """
    target = config.target_sparsity or 0.0
    if config.schedule == "imp":
        steps_per_round = config.steps_per_round or max_steps // (config.imp_rounds + 1)
        if steps_per_round < 1 or steps_per_round * config.imp_rounds > max_steps:
            raise ValueError(
                f"IMP with {config.imp_rounds} rounds of {steps_per_round} steps needs more than max_steps={max_steps}: "
                "lower imp_rounds / steps_per_round or train longer."
            )
        if config.rewind_step >= steps_per_round:
            raise ValueError(
                f"rewind_step={config.rewind_step} must come before the first pruning round at step {steps_per_round}."
            )
        return PruningSchedule(
            "imp", target, 0.0, 0, steps_per_round * config.imp_rounds, steps_per_round,
            rounds=config.imp_rounds, steps_per_round=steps_per_round, rewind_step=config.rewind_step,
        )
    start = config.start_step
    if config.schedule == "one_shot":
        end = start
    else:
        end = config.end_step if config.end_step is not None else max(start, (3 * max_steps) // 4)
    if end > max_steps or start > end:
        raise ValueError(
            f"The {config.schedule} schedule runs from step {start} to step {end}, but training stops at "
            f"max_steps={max_steps}: the target sparsity would never be reached. Set end_step <= max_steps "
            "(or leave it unset to fit the run), and start_step <= end_step."
        )
    frequency = config.pruning_frequency or max(1, (end - start) // 10)
    return PruningSchedule(config.schedule, target, config.initial_sparsity, start, end, frequency)


def restart_lr_each_round(lr_scheduler, schedule: PruningSchedule, args, max_steps: int) -> bool:
    """Make a Trainer's `LambdaLR` schedule start again in every IMP round. Returns False if it cannot.

    Round r covers steps [r * steps_per_round, (r + 1) * steps_per_round) (the last one runs to
    `max_steps`). Its weights are rewound to `rewind_step`, so its learning rate follows the
    Trainer's schedule (`lr_scheduler_type`, warmup) for a run of the round's length from that
    position. Only the multiplier functions are replaced: the scheduler's step count and state
    (checkpoints, resume) are the Trainer's own.
    """
    import torch
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import get_scheduler

    if not isinstance(lr_scheduler, LambdaLR):
        return False
    per_round, rewind, rounds = schedule.steps_per_round, schedule.rewind_step, schedule.rounds
    factors: dict[int, object] = {}

    def factor(length: int):
        if length not in factors:  # the Trainer's own schedule for a run of `length` steps
            scratch = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            factors[length] = get_scheduler(
                args.lr_scheduler_type, scratch, num_warmup_steps=args.get_warmup_steps(length),
                num_training_steps=length, scheduler_specific_kwargs=args.lr_scheduler_kwargs,
            ).lr_lambdas[0]
        return factors[length]

    def lr_lambda(step: int) -> float:
        round_index = min(step // per_round, rounds)
        start = round_index * per_round
        end = start + per_round if round_index < rounds else max(max_steps, start + 1)
        offset = rewind if round_index > 0 else 0
        return factor(end - start + offset)(step - start + offset)

    lr_scheduler.lr_lambdas = [lr_lambda] * len(lr_scheduler.lr_lambdas)
    for group, base_lr in zip(lr_scheduler.optimizer.param_groups, lr_scheduler.base_lrs):
        group["lr"] = base_lr * lr_lambda(lr_scheduler.last_epoch)  # the rate of the next step follows at once
    return True
