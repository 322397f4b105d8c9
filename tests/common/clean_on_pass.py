"""Runs one Python test script and removes its --workdir when it passes (or is skipped), so the
suite's checkpoints do not pile up on the disk: the trainer tests alone write several GB. A
failing test keeps its folder for a look; GRPO_KEEP_TEST_OUTPUT=1 keeps every folder.

Usage: python clean_on_pass.py SCRIPT ARGS... (ARGS holding --workdir DIR)"""
import os
import shutil
import subprocess
import sys

SKIPPED = 77


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: clean_on_pass.py SCRIPT ARGS...")
    workdir = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--workdir"), None)
    rc = subprocess.call([sys.executable, *args])
    keep = os.environ.get("GRPO_KEEP_TEST_OUTPUT", "") not in ("", "0")
    if workdir and rc in (0, SKIPPED) and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif workdir and rc not in (0, SKIPPED):
        print(f"the test's files are kept in {workdir}", flush=True)
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
