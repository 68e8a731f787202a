"""cent-serve: a CENT device (plain `DeviceWorker`, and its Ray actor in `device_worker.actor`)."""
from device_worker.kv_cache import KVCacheFull, PagedKVCache
from device_worker.worker import DeviceWorker

__all__ = ["DeviceWorker", "KVCacheFull", "PagedKVCache"]
