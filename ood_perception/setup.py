"""ament_python build of the ood_perception ROS 2 package (also pip-installable)."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = "ood_perception"


def _files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern, recursive=True) if os.path.isfile(p))


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={package_name: ["assets/**/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", _files("launch/*.py")),
        ("share/" + package_name + "/config", _files("config/*")),
    ],
    python_requires=">=3.10",
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="ood_perception developers",
    maintainer_email="dev@ood-perception.invalid",
    description="Multimodal out-of-distribution perception for vehicles (ROS 2).",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "ood-perception = ood_perception.cli:main",
            "fusion_segmentation_node = ood_perception.ros.fusion_node:main",
            "action_recognition_node = ood_perception.ros.recognition_node:main",
        ],
    },
)
