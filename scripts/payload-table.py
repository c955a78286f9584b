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

# The container classes (fixtures/containers): torch.load reads other bytes than another reader would. picklescan
# is asked for its verdict on each file (it reads, it never unpickles).
from picklescan.scanner import scan_file_path  # noqa: E402

CONTAINERS = os.path.join(ROOT, "fixtures", "containers")
facts = json.load(open(os.path.join(CONTAINERS, "facts.json")))
print()
print(f"| container (fixtures/containers) | torch.load reads | picklescan {version('picklescan')} | ckpt scan |")
print("|---|---|---|---|")
for name in sorted(facts):
    f = facts[name]
    r = scan_file_path(os.path.join(CONTAINERS, name))
    if not f["payload"]:
        ps = "n/a (no payload: other tensor values)"
    elif r.issues_count > 0:
        ps = "flags it"
    else:
        ps = "**misses it**" + (" (cannot read it)" if r.scan_err else "")
    p = subprocess.run([CKPT, "scan", os.path.join(CONTAINERS, name), "--json"], capture_output=True, text=True)
    ck = f"exit {p.returncode}, {json.loads(p.stdout)['verdict']}" if p.stdout else f"exit {p.returncode}"
    print(f"| `{name[:-3]}` ({f['container_class']}) | {f['torch_reads']} | {ps} | {ck} |")
