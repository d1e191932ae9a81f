"""ROS-free core of ixgs_ros. Nothing under this package may import rclpy or generated messages."""
