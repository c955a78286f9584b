#!/usr/bin/env python3
"""Print the README's table of payload kinds (fixtures/payloads): what picklescan (the pinned version in the venv)
says of each, and what `ckpt scan` says. Reads the facts files make-payload-fixtures.py wrote and runs ckpt scan;
unpickles nothing.

    .venv/bin/python scripts/payload-table.py [path/to/ckpt]
"""
import json
import os
import subprocess
import sys
from importlib.metadata import version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "debug", "ckpt")
DIR = os.path.join(ROOT, "fixtures", "payloads")

print(f"| payload (fixtures/payloads) | callable | picklescan {version('picklescan')} | ckpt scan |")
print("|---|---|---|---|")
for name in sorted(os.listdir(DIR)):
    if not name.endswith(".facts.json"):
        continue
    facts = json.load(open(os.path.join(DIR, name)))
    path = os.path.join(DIR, facts["file"])
    p = subprocess.run([CKPT, "scan", path, "--json"], capture_output=True, text=True)
    report = json.loads(p.stdout)
    ps = "flags it" if facts["picklescan"]["dangerous"] else "**misses it**"
    needs = f" (needs {facts['needs_package']})" if facts["needs_package"] else ""
    ck = f"exit {p.returncode}, {report['verdict']}"
    print(f"| `{facts['file'][:-3]}` | `{facts['callable']}`{needs} | {ps} | {ck} |")
