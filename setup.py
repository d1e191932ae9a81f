"""Python packaging for ixgs_ros.

Used two ways: ``pip install -e .`` in the project's .venv (scripts/setup.sh), and by users who install
the Python part alone. In a ROS 2 workspace colcon builds the package through CMakeLists.txt (ament_cmake:
it generates the interfaces in msg/ and installs this same Python package and the node executables).
"""
from setuptools import find_packages, setup

PACKAGE = "ixgs_ros"

NODES = {
    "xray_ingest_node": "ixgs_ros.nodes.ingest:main",
    "standardize_node": "ixgs_ros.nodes.standardize:main",
    "reconstruction_node": "ixgs_ros.nodes.reconstruction:main",
    "scan_player_node": "ixgs_ros.nodes.player:main",
}

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={f"{PACKAGE}.engine": ["rtk_sart_order.json"],
                  f"{PACKAGE}.standardize": ["weights/*.safetensors", "weights/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["numpy", "torch", "nibabel", "scipy", "scikit-image", "safetensors", "tqdm", "pyyaml"],
    python_requires=">=3.10",
    zip_safe=False,
    maintainer="ixgs_ros developers",
    maintainer_email="ixgs-ros@example.org",
    description="Intraoperative 3D X-ray volumes from a few tracked C-arm shots with R2-Gaussian splatting",
    license="Apache-2.0",
    entry_points={
        "console_scripts": ["ixgs = ixgs_ros.cli:main"] + [f"{n} = {t}" for n, t in NODES.items()],
    },
)
