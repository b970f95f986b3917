"""A non-finite loss or gradient stops the run instead of writing NaN into the weights.

The issue: "Silent NaN. `optim.lr=1e6`, `optim.lr=inf` (accepted by validation) and
`model.dtype=float16` on a CPU exit 0 with 'final loss nan' and save NaN weights, which later
crash sampling with a torch.multinomial traceback. A non-finite loss or gradient stops the run
with the step and the last good checkpoint named."
"""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.types import LossOutput
from posttrain.config import OptimConfig
from posttrain.errors import NonFiniteStepError, PosttrainError, TrainingError
from posttrain.train.loop import build_optimizer, optimizer_step


def setup() -> tuple[torch.nn.Linear, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer, scheduler = build_optimizer(model, OptimConfig(lr=0.1), total_steps=10)
    return model, optimizer, scheduler


def loss_of(model: torch.nn.Module, scale: float) -> LossOutput:
    x = torch.tensor([[1.0, 2.0, 3.0]])
    return LossOutput(loss_sum=(model(x) * scale).pow(2).sum())


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
         scale: float, grad_clip: float = 1.0) -> dict[str, float]:  # fmt: skip
    return optimizer_step(model, opt, sched, [scale], lambda s: loss_of(model, s), 1.0, grad_clip)


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_non_finite_loss_is_not_applied_and_names_the_step(scale: float, grad_clip: float) -> None:
    model, opt, sched = setup()
    step(model, opt, sched, 1.0, grad_clip)
    step(model, opt, sched, 1.0, grad_clip)
    before, lr_before = snapshot(model), opt.param_groups[0]["lr"]
    with pytest.raises(NonFiniteStepError) as err:
        step(model, opt, sched, scale, grad_clip)
    assert err.value.step == 3
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model), strict=True))  # the update was skipped
    assert sched.last_epoch == 2 and opt.param_groups[0]["lr"] == lr_before  # and the schedule did not advance
    message = str(err.value)
    assert message.startswith("optimiser step 3: ") and "\n" not in message
    assert "lower optim.lr" in message and "checkpoints" in message and "untouched" in message
    assert isinstance(err.value, TrainingError) and isinstance(err.value, PosttrainError)  # the CLI's one line, exit 2


def test_a_finite_loss_with_a_non_finite_gradient_is_refused() -> None:
    """The lr=1e30 case, where the loss is still finite and the gradient no longer is: here sqrt at 0."""
    model, opt, sched = setup()
    before = snapshot(model)

    def loss_fn(_: int) -> LossOutput:
        return LossOutput(loss_sum=(model.bias.sum() * 0.0).sqrt() + model.weight.sum())

    assert torch.isfinite(loss_fn(0).loss_sum)
    with pytest.raises(NonFiniteStepError, match=r"^optimiser step 1: the gradient norm is nan") as err:
        optimizer_step(model, opt, sched, [0], loss_fn, 1.0, 1.0)
    assert err.value.loss is not None and err.value.loss == pytest.approx(float(model.weight.detach().sum()))
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model), strict=True))


def test_finite_steps_are_unchanged() -> None:
    """The check reads the loss and the norm; it computes nothing that feeds the update."""
    model, opt, sched = setup()
    stats = [step(model, opt, sched, 1.0) for _ in range(3)]
    assert all(s["loss"] > 0 and s["grad_norm"] > 0 for s in stats)
    assert sched.last_epoch == 3
