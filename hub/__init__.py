"""edge-hub: enrolls devices, holds releases and rollouts, shows the fleet."""

__version__ = "0.1.0"
