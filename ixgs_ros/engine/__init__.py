"""Reconstruction-engine components that run on any torch device (CPU or CUDA)."""
