"""The native backend (`backend.py`) and its C helper (`tmebox_native.c`, built by `build.py`)."""

from tmebox.runtime.native.backend import NativeBackend

__all__ = ["NativeBackend"]
