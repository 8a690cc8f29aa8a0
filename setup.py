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
    # the class table and the config recipes (--cfg NAME) travel with the package
    package_data={"mit_semseg": ["models/*.csv", "config/files/*.yaml"]},
    install_requires=[
        "numpy",
        "torch>=2.1",
        "torchvision",
        "opencv-python-headless",
        "yacs",
        "tqdm",
        "filelock",  # serialises concurrent downloads of one file (already a torch dependency)
        "matplotlib",
        "Pillow",  # header reads of the start-up data check, palette labels
    ],
    extras_require={
        # "wheel" lets tests/test_install.py build the wheel offline with older setuptools
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff", "wheel"],
        # ONNX export (mit-semseg-export) and the onnxruntime inference backend
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        # MODEL.precision int8: PT2E quantization (0.18 is the release built for torch 2.14)
        "int8": ["torchao>=0.18,<0.19"],
    },
    entry_points={
        "console_scripts": [
            "mit-semseg-train = mit_semseg.cli.train:main",
            "mit-semseg-eval = mit_semseg.cli.eval:main",
            "mit-semseg-eval-multipro = mit_semseg.cli.eval_multipro:main",
            "mit-semseg-test = mit_semseg.cli.test:main",
            "mit-semseg-export = mit_semseg.cli.export:main",
        ],
    },
)
