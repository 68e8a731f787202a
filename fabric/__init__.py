"""cent-serve: the CXL switch as a fabric actor (filled in by the device/fabric issue)."""
