"""Realistic C-arm X-ray simulation: per-material path lengths from a CT, X-ray physics and image styles."""
