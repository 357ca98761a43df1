"""ament_python package ``vl_anomaly_ros`` (the ROS 2 node). Builds with ``colcon build`` on a Jazzy install and
with ``pip install .`` into our venv. The core it wraps is the separate pip package in ``model/``."""

from glob import glob

from setuptools import setup

PACKAGE = "vl_anomaly_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.xml")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vl-anomaly developers",
    maintainer_email="dev@vl-anomaly.invalid",
    description="ROS 2 road-anomaly segmentation node (thin layer over the vl_anomaly core)",
    license="Apache-2.0",
    entry_points={"console_scripts": [
        "anomaly_node = vl_anomaly_ros.node_main:main",
    ], "vl_anomaly.commands": [
        "make-bag = vl_anomaly_ros.cli:register_make_bag",
        "replay = vl_anomaly_ros.cli:register_replay",
        "replay-eval = vl_anomaly_ros.cli:register_replay_eval",
        "ros-demo = vl_anomaly_ros.cli:register_ros_demo",
    ]},
)
