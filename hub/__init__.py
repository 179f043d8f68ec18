"""edge-hub: enrolls devices, signs and serves each device's target, shows the fleet."""

__version__ = "0.1.0"
