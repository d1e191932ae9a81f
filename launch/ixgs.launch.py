"""Launch the ixgs_ros pipeline: xray_ingest_node -> standardize_node -> reconstruction_node.

    ros2 launch ixgs_ros ixgs.launch.py [namespace:=ixgs] [params_file:=/path/to/ixgs.yaml] [scan_dir:=DIR]

Topics (relative to the namespace): image_raw, camera_info, source_pose -> xray_views_raw -> xray_views
-> volume, reconstruction_status, bone_markers, bone_meshes, bone_cloud, mpr/* (plus /tf_static, /diagnostics).
With scan_dir, scan_player_node plays that scan as a tracked C-arm. Needs a ROS 2 installation with `launch` and
`launch_ros` (they are not on PyPI, so the project's virtual environment cannot run this file: `ixgs live` starts
the same executables with the same parameter file there, and test_ros_live checks that both agree).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import LaunchConfigurationNotEquals
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "ixgs_ros"
NODES = ("xray_ingest_node", "standardize_node", "reconstruction_node")
PLAYER = "scan_player_node"
NAMESPACE = "ixgs"
PARAMS_FILE = ("config", "ixgs.yaml")


def generate_launch_description():
    namespace = LaunchConfiguration("namespace")
    params_file = LaunchConfiguration("params_file")
    scan_dir = LaunchConfiguration("scan_dir")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value=NAMESPACE, description="Namespace of all nodes and topics"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), *PARAMS_FILE]),
            description="Node parameters (ROS 2 parameter YAML)"),
        DeclareLaunchArgument("scan_dir", default_value="",
                              description="ixgs-scan folder played as a tracked C-arm by scan_player_node"),
        *[
            Node(package=PACKAGE, executable=name, name=name, namespace=namespace,
                 parameters=[params_file], output="screen", emulate_tty=True)
            for name in NODES
        ],
        Node(package=PACKAGE, executable=PLAYER, name=PLAYER, namespace=namespace,
             parameters=[params_file, {"scan_dir": scan_dir}], output="screen", emulate_tty=True,
             condition=LaunchConfigurationNotEquals("scan_dir", "")),
    ])
