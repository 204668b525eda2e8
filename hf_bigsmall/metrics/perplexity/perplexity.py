"""Perplexity of a causal language model from its summed token losses.

The Hub's `perplexity` module loads a model itself; this one takes what an evaluation loop already
has, so the model is run once: per sequence (or batch), the summed negative log-likelihood in nats
and the number of predicted tokens. Perplexity = exp(total NLL / total tokens), the exponentiated
mean token cross-entropy.
"""

import math
import sys

import datasets
import evaluate

_LARGEST_EXPONENT = math.log(sys.float_info.max)

_KWARGS_DESCRIPTION = """
Args:
    nll_sums (`list[float]`): summed negative log-likelihood (nats) of the predicted tokens of each item.
    num_tokens (`list[int]`): number of predicted tokens in each item.
Returns:
    perplexity (`float`, inf where exp(mean_nll) exceeds the largest float), mean_nll (`float`, nats per token).
Example:
    >>> evaluate.load("path/to/perplexity").compute(nll_sums=[6.0, 2.0], num_tokens=[3, 1])
    {'perplexity': 7.38905609893065, 'mean_nll': 2.0}
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Perplexity = exp(mean token negative log-likelihood).",
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nll_sums": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll_sums, num_tokens):
        total_tokens = sum(num_tokens)
        if total_tokens <= 0:
            raise ValueError("perplexity needs at least one predicted token.")
        mean_nll = float(sum(nll_sums)) / total_tokens
        # past ~709.8 nats per token exp() overflows a float: such a model (exploding logits) is infinitely perplexed
        perplexity = math.inf if mean_nll > _LARGEST_EXPONENT else math.exp(mean_nll)  # NaN stays NaN
        return {"perplexity": perplexity, "mean_nll": mean_nll}
