"""cent-serve: the CXL switch (plain `Fabric`, and its Ray actor in `fabric.actor`)."""
from fabric.switch import HOST, Fabric, frame, unframe

__all__ = ["HOST", "Fabric", "frame", "unframe"]
