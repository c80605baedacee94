"""Build hook for the native sandbox helper; all other metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["src/tmebox/runtime/native/build.py:ffibuilder"])
