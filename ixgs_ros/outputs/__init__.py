"""Navigation outputs of a volume: bone meshes, multiplanar slices, 3D renderings, exports (NIfTI, NRRD) and the
report page (``navigation.write_navigation_outputs`` writes them all)."""
