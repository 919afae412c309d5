"""credit: on-policy self-distillation (SDPO) and CREDIT, input-specific credit from distillation.

Stages, in the order the data flows: ``tasks`` (outcome + feedback) -> ``rollout`` (sampling) ->
``teacher`` (contexts, negatives, scoring) -> ``signal`` (ΔV, S, G, advantages) -> ``objectives``
(losses) -> ``train`` (the loop).
"""

__version__ = "0.1.0"
