"""Teacher stage: the contexts the teacher is scored on (``contexts``) and the negative contexts
that CREDIT contrasts them with (``negatives``)."""

from credit.teacher.contexts import (
    Privileged,
    TeacherContexts,
    Templates,
    build_teacher_contexts,
    fit_context,
    remove_thinking,
    render_context,
    reprompt_text,
)
from credit.teacher.negatives import (
    NegativeContexts,
    build_negative_contexts,
    can_contrast,
    problem_keys,
    sample_negative_groups,
)

__all__ = [
    "NegativeContexts",
    "Privileged",
    "TeacherContexts",
    "Templates",
    "build_negative_contexts",
    "build_teacher_contexts",
    "can_contrast",
    "fit_context",
    "problem_keys",
    "remove_thinking",
    "render_context",
    "reprompt_text",
    "sample_negative_groups",
]
