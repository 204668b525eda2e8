"""Pruning criteria: what decides which weights, neurons or heads go. A registry users extend.

An entry ([`PruningCriterion`]) declares what it needs from a calibration pass (`needs`), which
granularities it can prune (`granularities`), and how: a `score` per weight (the lowest go), a
`prune` step that prunes a layer itself and may rewrite the weights it keeps (SparseGPT), and/or
`unit_scores` for whole FFN neurons and attention heads. `prune_one_shot(method=name)` and
`MagnitudePruningCallback(criterion=name)` take any registered name; the calibration pass collects
exactly the statistic the entry declares, and nothing when it needs nothing.

The built-ins (`magnitude`, `wanda`, `activation`, `sparsegpt`) are one module each in this
package and register themselves with [`register_pruning_criterion`], as user code does.

Example:

```python
>>> from hf_bigsmall import PruningCriterion, prune_one_shot, register_pruning_criterion
>>> register_pruning_criterion(PruningCriterion(
...     name="squared", description="squared magnitude", score=lambda weight, statistic: weight.pow(2)))
>>> prune_one_shot(model, sparsity=0.5, method="squared")
```
"""

from __future__ import annotations

from .base import (  # the registry itself; the built-ins below register into it as user code would
    GRANULARITIES,
    MULTI_PROCESS_FIX,
    NEEDS,
    PruningCriterion,
    get_pruning_criterion,
    pruning_criterion_names,
    register_pruning_criterion,
)
from . import activation, magnitude, sparsegpt, wanda  # noqa: F401  (the built-ins)

__all__ = [
    "GRANULARITIES", "NEEDS", "PruningCriterion", "get_pruning_criterion", "pruning_criterion_names",
    "register_pruning_criterion",
]
