"""The GPU benchmarks' result file (PERF.md section 5): one JSON object with the device, the
commit, the date, torch's version and the records, written to `out` and, on the device tool's
machine, copied into $OUT (the folder whose files come back)."""

import datetime
import json
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_results(out, records, torch):
    # CFLASH_COMMIT: the commit of the tree that was copied to the GPU machine (its .git may be stale)
    commit = os.environ.get("CFLASH_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"device": torch.cuda.get_device_name(), "commit": commit or "unknown",
              "date": datetime.date.today().isoformat(), "torch": torch.__version__, "records": records}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    dest = os.environ.get("OUT")
    if dest and os.path.dirname(os.path.abspath(out)) != os.path.abspath(dest):
        shutil.copy(out, os.path.join(dest, os.path.basename(out)))
    return result
