"""Adapters to outside platforms (RunPod's public endpoint API)."""
