"""credit: on-policy self-distillation (SDPO) and CREDIT, input-specific credit from distillation.

Stages, in the order the data flows: ``tasks`` (outcome + feedback) -> ``rollout`` (sampling) ->
``teacher`` (contexts, negatives, scoring) -> ``signal`` (ΔV, S, G, advantages) -> ``objectives``
(losses) -> ``train`` (the loop).
"""

__version__ = "0.1.0"


def fit(*args, **kwargs):
    """Train from Python: ``credit.fit(config, reward=fn, train_data=rows, eval_data=rows, overrides=[...])``
    returns the trained model, its tokenizer, the run directory and the summary (``credit.api.fit``)."""
    from credit.api import fit as _fit

    return _fit(*args, **kwargs)
