"""Frozen entry point of edge-agent (PyInstaller needs a script; this is edge_agent.cli:main)."""

import sys

from edge_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
