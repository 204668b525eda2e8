"""`PruningState`: everything hf_bigsmall knows about a model's pruning, in one object.

The masks, the record of how they were made (the `sparsity` block of `config.json` before the
measurements are added), the position of a training schedule (last pruning step, IMP round) and
the IMP rewind weights. `MagnitudePruningCallback` holds one while it trains; `prune_one_shot`,
`compact` and the callback attach it to the model they prune as `model.pruning_state`, the one
attribute pruning sets on a model (as transformers keeps `model.hf_quantizer`), so that
`save_pruned_model`, `sparsity_report`, `compact` and a later pruning run find it.
`hf_bigsmall.pruning.io` saves it beside the weights and reads it back.

Plain attributes, not buffers or parameters: the weights file keeps exactly the keys of the
original architecture, so `from_pretrained` without hf_bigsmall loads the zeros.

Example:

```python
>>> from hf_bigsmall.pruning.state import get_pruning_state
>>> prune_one_shot(model, calibration, sparsity=0.5)
>>> state = get_pruning_state(model)
>>> state.record["method"], len(state.masks)
('wanda', 14)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

STATE_ATTRIBUTE = "pruning_state"


@dataclass
class PruningState:
    """A model's pruning, in one object.

    Attributes:
        masks: `{parameter name: bool tensor}`, `True` where the weight is pruned (only ever grows).
        record: how the masks were made (`method`, `schedule`, `structure`, `scope`, `target`,
            `calibration`, ...): the `sparsity` block of `config.json` before the measured sparsity is added.
        last_pruned_step: the training step of the last pruning event (None: before training, or one-shot).
        imp_round: rounds of iterative magnitude pruning done.
        rewind_weights: IMP: the weights surviving ones are rewound to (`sparsity_rewind.safetensors`).
    """

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    last_pruned_step: int | None = None
    imp_round: int = 0
    rewind_weights: dict[str, torch.Tensor] | None = None


def get_pruning_state(model: nn.Module) -> PruningState | None:
    """The pruning state attached to `model`, or None when it carries none."""
    state = model.__dict__.get(STATE_ATTRIBUTE)
    return state if isinstance(state, PruningState) else None


def attach_pruning_state(model: nn.Module, state: PruningState) -> PruningState:
    """Attach `state` to `model` (replacing any), so savers and later pruning runs find it."""
    if not isinstance(state, PruningState):
        raise TypeError(f"attach_pruning_state takes a PruningState, got {type(state).__name__}.")
    model.__dict__[STATE_ATTRIBUTE] = state
    return state


def detach_pruning_state(model: nn.Module) -> PruningState | None:
    """Remove and return the pruning state attached to `model`."""
    return model.__dict__.pop(STATE_ATTRIBUTE, None)
