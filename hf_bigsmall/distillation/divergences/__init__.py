"""The divergences distillation minimises: a registry that user code extends the way the built-ins do.

A divergence is one function of the student's and the teacher's log-probabilities, both already
softened by the temperature, that gives one value per row: `(N, C), (N, C) -> (N,)`, plus the
parameters it declares (the JSD's `beta`). Every path of the kit takes it from here: `kd_loss` on
materialised logits (whole or chunk by chunk), the LM head fused with the loss
(`fused_distillation_losses`) and the cached top-k targets (`cached_kd_loss`, where the two
distributions are the top-k tokens plus one "tail" outcome). Forward KL, reverse KL and the JSD are
registered below exactly as a user's divergence would be.

The chunked paths need the gradient of each row's value with respect to the student's logits while a
chunk's softmaxes are at hand. By default autograd takes it from `function`; an entry may give a
closed form as `gradient` (faster: one or two passes over the chunk instead of autograd's several).

Example:

```python
>>> import torch
>>> from hf_bigsmall import Divergence, register_divergence, DistillationConfig
>>> def total_variation(student_logprobs, teacher_logprobs):
...     return 0.5 * (student_logprobs.exp() - teacher_logprobs.exp()).abs().sum(-1)
>>> register_divergence(Divergence("total_variation", total_variation, "total variation distance"))
>>> DistillationConfig(output_dir="student", kd_loss="total_variation").kd_loss
'total_variation'
```
"""

from __future__ import annotations

from .base import (  # the registry itself; the built-ins below register into it as user code would
    Divergence,
    LOG_FLOOR,
    divergence_names,
    divergence_rows,
    get_divergence,
    register_divergence,
    resolve_divergence,
    rows_and_logit_gradient,
)
# the built-ins, in the order divergence_names() lists them
from . import forward_kl  # noqa: F401,I001
from . import reverse_kl  # noqa: F401
from . import jsd  # noqa: F401

__all__ = ["Divergence", "divergence_names", "get_divergence", "register_divergence"]
