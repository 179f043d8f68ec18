"""Frozen entry point of edge-hub (PyInstaller needs a script; this is hub.cli:hub_main)."""

import sys

from hub.cli import hub_main

if __name__ == "__main__":
    sys.exit(hub_main())
