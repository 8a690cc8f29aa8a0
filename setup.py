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
    # the class table, the config recipes (--cfg NAME) and the app's page and example photos
    # travel with the package
    package_data={"mit_semseg": ["models/*.csv", "config/files/*.yaml", "app/static/*",
                                 "app/examples/*"]},
    install_requires=[
        "numpy",
        "torch>=2.1",
        "torchvision",
        "opencv-python-headless",
        "yacs",
        "tqdm",
        # holds train.py's DIR/train.lock (and the download lock on Windows); from 3.30 (but
        # 4.0.0) a lock is not inherited by forked children (data-loader workers), which would
        # keep it after the run is killed. 3.30 needs Python >= 3.10.
        "filelock>=3.30,!=4.0.0; python_version >= '3.10'",
        "filelock; python_version < '3.10'",
        "matplotlib",
        "Pillow",  # header reads of the start-up data check, palette labels
    ],
    extras_require={
        # "wheel" lets tests/test_install.py build the wheel offline with older setuptools;
        # httpx2 (httpx before Python 3.11) is what starlette's TestClient sends with
        # (tests/app); playwright drives the system's Chromium in tests/app/test_browser.py (it
        # never downloads a browser); scikit-image's bundled photographs are the own-data
        # tests' dataset (tests/own_data.py)
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff", "wheel",
                 "httpx2; python_version >= '3.11'", "httpx; python_version < '3.11'",
                 "playwright", "scikit-image"],
        # ONNX export (mit-semseg-export) and the onnxruntime inference backend
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        # the web page (mit-semseg-app): a small ASGI app, its server, multipart uploads
        "app": ["starlette>=0.40", "uvicorn>=0.30", "python-multipart>=0.0.13"],
        # MODEL.precision int8: PT2E quantization (0.18 is the release built for torch 2.14)
        "int8": ["torchao>=0.18,<0.19"],
    },
    entry_points={
        "console_scripts": [
            "mit-semseg-train = mit_semseg.cli.launch:train",
            "mit-semseg-eval = mit_semseg.cli.launch:eval",
            "mit-semseg-eval-multipro = mit_semseg.cli.launch:eval_multipro",
            "mit-semseg-test = mit_semseg.cli.launch:test",
            "mit-semseg-export = mit_semseg.cli.launch:export",
            "mit-semseg-app = mit_semseg.app.main:main",
        ],
    },
)
