"""First step of ``benchmarks/gpu.sh`` on a bare machine: install the wheelhouse offline, then say what imports.

The GPU machine has torch, transformers, accelerate and peft (and what they pulled in), nothing else,
and no network. ``make gpu-wheels`` downloads, pinned and without dependencies, the wheels the script
needs beyond those (pydantic and its core, rich, typing-extensions, …) into ``benchmarks/wheels/cpXY``;
that folder travels with the repository. This script installs every wheel of it with
``pip install --no-index --no-deps --target TARGET`` (or, where the interpreter has no pip, unpacks
them: a wheel is a zip of what goes into site-packages), then imports, in a fresh interpreter that has
TARGET on its path, every module a part needs, and writes one JSON object: versions, the device, and
what could not be imported and which parts that stops. Standard library only: it runs before anything
is installed.

    python benchmarks/gpu_env.py --wheels benchmarks/wheels/cp312 --target /tmp/site --json out/env.json

TARGET must already be on ``PYTHONPATH`` (gpu.sh puts it there, after ``src``): the wheels shadow the
machine's copies, so credit always runs on the versions it was rehearsed with.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

#: module -> the parts of gpu.sh that need it
NEEDS = {
    "torch": "all", "transformers": "all", "accelerate": "all", "peft": "b (LoRA)",
    "typing_extensions": "all (pydantic)", "pydantic": "all (credit's config)", "yaml": "all (credit's config)",
    "credit.cli": "a (credit bench)", "credit.train": "a, b, e", "rich": "a (credit bench's tables)",
    "trl": "e (TRL peer)", "datasets": "e (TRL peer)",
}

_PROBE = r"""
import importlib, json, sys
out = {"python": sys.version.split()[0], "imports": {}}
for name in sys.argv[1].split(","):
    try:
        mod = importlib.import_module(name)
        out["imports"][name] = {"ok": True, "version": getattr(mod, "__version__", None),
                                "from": getattr(mod, "__file__", None)}
    except Exception as e:  # a missing module, or one whose own import fails
        out["imports"][name] = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
try:
    import torch
    cuda = torch.cuda.is_available()
    out["device"] = {"cuda": cuda, "name": torch.cuda.get_device_name() if cuda else "CPU",
                     "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
                     "cuda_version": torch.version.cuda, "cpus": __import__("os").cpu_count()}
except Exception as e:
    out["device"] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""


def install(wheels: Path, target: Path) -> dict:
    """Every wheel of ``wheels`` into ``target``, offline and without dependencies."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        return {"wheels": [], "method": None, "note": f"no wheels in {wheels} (run `make gpu-wheels`)"}
    target.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in files]
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--quiet",
               "--disable-pip-version-check", "--target", str(target), *map(str, files)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            return {"wheels": names, "method": "pip --no-index --no-deps --target"}
        pip_error = (done.stderr.strip().splitlines() or ["?"])[-1]
    else:
        pip_error = "no pip in this interpreter"
    for f in files:  # a wheel is a zip of site-packages content; its .data/{purelib,platlib} go there too
        with zipfile.ZipFile(f) as z:
            z.extractall(target)
    for data in target.glob("*.data"):
        for lib in ("purelib", "platlib"):
            if (data / lib).is_dir():
                shutil.copytree(data / lib, target, dirs_exist_ok=True)
    return {"wheels": names, "method": "unzip", "pip_error": pip_error}


def probe(modules: list[str]) -> dict:
    """Import each module in a fresh interpreter (it sees ``PYTHONPATH`` as the parts will)."""
    done = subprocess.run([sys.executable, "-c", _PROBE, ",".join(modules)], capture_output=True, text=True)
    if done.returncode:
        return {"imports": {}, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", type=Path, required=True, help="the wheelhouse folder (benchmarks/wheels/cpXY)")
    p.add_argument("--target", type=Path, required=True, help="install into this folder (on PYTHONPATH already)")
    p.add_argument("--json", dest="json_out", type=Path, required=True)
    args = p.parse_args(argv)
    target_on_path = str(args.target.resolve()) in [str(Path(x).resolve()) for x in
                                                     os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]
    env = {"kind": "env", "install": install(args.wheels, args.target), "target_on_pythonpath": target_on_path,
           **probe(list(NEEDS))}
    missing = {m: NEEDS[m] for m, r in env["imports"].items() if not r["ok"]}
    env["missing"] = missing
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(env, indent=1))
    inst = env["install"]
    print(f"wheelhouse {args.wheels}: {len(inst['wheels'])} wheels installed ({inst['method'] or inst.get('note')})")
    dev = env.get("device", {})
    print(f"python {env.get('python')}, device {dev.get('name', dev.get('error'))}; "
          + ", ".join(f"{m} {r.get('version')}" for m, r in env["imports"].items()
                      if r["ok"] and m in ("torch", "transformers", "accelerate", "peft", "pydantic")))
    if env.get("error"):
        print(f"could not run the import check: {env['error']}")
    for m, parts in missing.items():
        print(f"could not import {m} (needed by part {parts}): {env['imports'][m]['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
