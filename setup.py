"""Lets Beam ship this package to remote workers with --setup_file ./setup.py."""

from setuptools import setup

setup()
