"""How a network leaves PyTorch: ONNX and ``torch.export`` (:mod:`~mit_semseg.deploy.export`),
and onnxruntime behind the eager model's interface (:mod:`~mit_semseg.deploy.onnxruntime`,
an optional extra: ``pip install 'mit_semseg[onnx]'``)."""
