"""The R²-Gaussian reconstruction engine (ROS-free): configuration, initial TV-SART solve, Gaussian placement,
splatting and voxelizing kernels, optimiser, densification strategies, state files and the live session
policy. :class:`ReconstructionEngine` ties them together; :class:`~ixgs_ros.engine.live.LiveSession` drives it
as views arrive."""
from .config import EngineConfig, EngineError, load_engine_config
from .engine import EngineStatus, HoldoutScores, ReconstructionEngine

__all__ = ["EngineConfig", "EngineError", "ReconstructionEngine", "EngineStatus", "HoldoutScores",
           "load_engine_config"]
