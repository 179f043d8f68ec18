"""Frozen entry point of edge-hub (PyInstaller needs a script; this is hub.cli:hub_main)."""

import multiprocessing
import sys

from hub.cli import hub_main

if __name__ == "__main__":
    # Large sync bodies are decoded in spawned worker processes (hub/offload.py); in a
    # frozen binary a spawned child re-runs this script, and freeze_support() makes it
    # run the worker instead of a second hub.
    multiprocessing.freeze_support()
    sys.exit(hub_main())
