"""edge-agent: owns a device's containers and reconciles them to a signed desired state."""

__version__ = "0.1.0"
