"""The calibration statistic a pruning criterion declares (`PruningCriterion.needs`), collected per layer.

`"input_norms"` and `"input_hessian"` are accumulated by forward pre-hooks on the targeted layers,
either in one pass of the whole model ([`collect_statistics`]) or block by block
(`hf_bigsmall.pruning.sequential`, through [`InputStatisticCollector`]); `"gradients"` runs the
model's own loss backwards over the calibration windows. `"nothing"` runs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .calibration import CalibrationData, HookFunction, _accumulate_squared_norm, _model_device, run_calibration
from .criteria import PruningCriterion
from .sparsegpt import SharedHessians
from .wanda import _is_transposed, in_features

INPUT_STATISTICS = ("input_norms", "input_hessian")


class InputStatisticCollector:
    """Forward pre-hooks that accumulate one input statistic of some layers, and hand each one out once.

    `"input_norms"`: `sum_t x_tj^2` per input channel (float64); `"input_hessian"`: `X X^T` in
    `hessian_dtype`, one accumulator shared by the layers that read the same tensor.
    """

    def __init__(self, needs: str, modules: Mapping[str, nn.Module], hessian_dtype: torch.dtype = torch.float64):
        if needs not in INPUT_STATISTICS:
            raise ValueError(f"needs={needs!r} is not an input statistic {INPUT_STATISTICS}.")
        self.needs = needs
        self.modules = dict(modules)
        self._hessians = SharedHessians(self.modules, hessian_dtype) if needs == "input_hessian" else None
        self._norms = {} if needs == "input_hessian" else {
            name: torch.zeros(in_features(module), dtype=torch.float64, device=module.weight.device)
            for name, module in self.modules.items()
        }

    def hooks(self) -> dict[str, HookFunction]:
        if self._hessians is not None:
            return {name: self._hessians.hook(name) for name in self.modules}
        return {name: _accumulate_squared_norm(self._norms[name]) for name in self.modules}

    def pop(self, name: str) -> torch.Tensor:
        """The layer's statistic, forgotten here (a shared Hessian is freed once every layer took it)."""
        return self._hessians.pop(name) if self._hessians is not None else self._norms.pop(name)


def collect_statistics(
    model: nn.Module,
    calibration: CalibrationData | None,
    targets: Mapping[str, nn.Module],
    criterion: PruningCriterion,
    hessian_dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor] | None:
    """`{layer name: statistic}` of what `criterion.needs` declares, over the calibration windows, in one pass.

    None when it needs nothing. `"input_hessian"` holds every targeted layer's `in_features^2`
    Hessian at once here (the block-by-block path holds one block's).
    """
    if criterion.needs == "nothing":
        return None
    if criterion.needs in INPUT_STATISTICS:
        collector = InputStatisticCollector(criterion.needs, targets, hessian_dtype)
        run_calibration(model, calibration, forward_pre_hooks=collector.hooks())
        return {name: collector.pop(name) for name in targets}
    if criterion.needs == "gradients":
        return collect_squared_gradients(model, calibration, targets)
    raise ValueError(f"Criterion {criterion.name!r} needs {criterion.needs!r}, which ranks whole units, not the weights "
                     "of single layers.")


def collect_squared_gradients(
    model: nn.Module, calibration: CalibrationData, targets: Mapping[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """`sum over batches of (dL/dW)^2` per targeted weight, float32 `(out, in)`, L the model's loss with
    `labels=input_ids` (the empirical Fisher diagonal). The model's own gradients are left as they were."""
    parameters = list(model.parameters())
    saved = [param.grad for param in parameters]
    squared = {name: torch.zeros(module.weight.shape, dtype=torch.float32, device=module.weight.device)
               for name, module in targets.items()}
    was_training = model.training
    model.eval()
    device = _model_device(model)
    cache_off = {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None) is not None else {}
    try:
        with torch.enable_grad():
            for batch in calibration.batches(device):
                for param in parameters:
                    param.grad = None
                outputs = model(**batch, labels=batch["input_ids"], **cache_off)
                loss = getattr(outputs, "loss", None)
                if loss is None:
                    raise ValueError("A criterion with needs='gradients' backpropagates the model's own loss with "
                                     "labels=input_ids: use a causal or masked LM (AutoModelForCausalLM, ...).")
                loss.backward()
                for name, module in targets.items():
                    if module.weight.grad is not None:
                        squared[name].add_(module.weight.grad.detach().float().pow(2))
    finally:
        for param, grad in zip(parameters, saved):
            param.grad = grad
        model.train(was_training)
    return {name: value.t() if _is_transposed(targets[name]) else value for name, value in squared.items()}
