"""cent-serve: the Ray device actors (filled in by the device/fabric issue)."""
