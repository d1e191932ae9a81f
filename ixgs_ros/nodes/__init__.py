"""ROS 2 side of ixgs_ros: message conversion (:mod:`ixgs_ros.nodes.convert`) and the node executables
(:mod:`~ixgs_ros.nodes.ingest`, :mod:`~ixgs_ros.nodes.standardize`, :mod:`~ixgs_ros.nodes.reconstruction`).

Everything here may import rclpy and the generated ``ixgs_ros.msg``; ``ixgs_ros.core`` never imports this
package.
"""
