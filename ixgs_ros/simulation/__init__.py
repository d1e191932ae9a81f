"""Simulated scans from a real CT: CT loading and vertebra labels, analytic phantoms, C-arm trajectories, exact
line integrals (``simulate``), and the realistic X-ray physics of real-style images."""
