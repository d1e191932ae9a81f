"""Launch the ixgs_ros pipeline: xray_ingest_node -> standardize_node -> reconstruction_node.

    ros2 launch ixgs_ros ixgs.launch.py [namespace:=ixgs] [params_file:=/path/to/ixgs.yaml]

Topics (relative to the namespace): image_raw, camera_info, source_pose -> xray_views_raw -> xray_views
-> volume, reconstruction_status. Needs a ROS 2 installation with `launch` and `launch_ros` (they are not
on PyPI, so the project's virtual environment cannot run this file; the tests only check it statically).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "ixgs_ros"
NODES = ("xray_ingest_node", "standardize_node", "reconstruction_node")


def generate_launch_description():
    namespace = LaunchConfiguration("namespace")
    params_file = LaunchConfiguration("params_file")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="ixgs", description="Namespace of all nodes and topics"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "ixgs.yaml"]),
            description="Node parameters (ROS 2 parameter YAML)"),
        *[
            Node(package=PACKAGE, executable=name, name=name, namespace=namespace,
                 parameters=[params_file], output="screen", emulate_tty=True)
            for name in NODES
        ],
    ])
