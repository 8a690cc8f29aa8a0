from setuptools import find_packages, setup

setup(
    name="mit_semseg",
    version="1.1.0",
    description="Semantic segmentation / scene parsing on MIT ADE20K, CPU and multi-GPU",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["mit_semseg", "mit_semseg.*"]),
    package_data={"mit_semseg": ["data/*.csv"]},
    install_requires=[
        "numpy",
        "torch>=2.1",
        "torchvision",
        "opencv-python-headless",
        "yacs",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff"]},
)
