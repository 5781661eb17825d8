"""Render, build, check, push and export PyTorch images for AWS GPU clusters."""

__version__ = "0.1.0"
