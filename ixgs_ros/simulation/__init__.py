"""Simulated scans from a real CT: CT loading and vertebra labels, analytic phantoms, C-arm trajectories, exact
line integrals (``simulate``), and real-style C-arm images (per-material path lengths, X-ray physics, named
image styles: ``styles``, ``styled_scan``)."""
