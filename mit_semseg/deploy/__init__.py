"""How a network leaves PyTorch: ONNX and ``torch.export`` (:mod:`~mit_semseg.deploy.export`),
onnxruntime behind the eager model's interface (:mod:`~mit_semseg.deploy.onnxruntime`, an
optional extra: ``pip install 'mit_semseg[onnx]'``), and int8 quantization for CPUs with int8
units (:mod:`~mit_semseg.deploy.int8`, ``MODEL.precision int8``, an optional extra:
``pip install 'mit_semseg[int8]'``)."""
