"""The analysis layer: commands that read runs, models and results, and write tables and pictures.

``credit eval`` (``eval_cli``), ``explain``, ``pmi``, ``report``, ``sweep`` with its statistics
(``stats``), ``bench`` and ``plan``; ``runfiles`` loads what they read (run directories, checkpoints,
rollout logs) and ``viz`` renders HTML and PNG. They build on the core (``credit.train``,
``credit.scoring``, the tasks' and teacher's context builders) and the core never imports them:
``tests/test_layout.py`` checks it.
"""
