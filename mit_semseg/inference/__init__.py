"""How a trained network answers for an image or a dataset.

* :mod:`~mit_semseg.inference.predict`: probabilities and labels of one image at several
  scales, flipped, by windows (:class:`~mit_semseg.inference.predict.PredictOptions`);
* :mod:`~mit_semseg.inference.banded_tail`: the full-size tail (upsampling, softmax, averaging)
  by bands of rows;
* :mod:`~mit_semseg.inference.fast_path`: BatchNorm folding, factored heads, layout, compile;
* :mod:`~mit_semseg.inference.trained_model`: a trained model on disk and loading it;
* :mod:`~mit_semseg.inference.evaluation`: the evaluation loop, its hooks and result files.

Library code: explicit arguments or small typed objects, never the config (``mit_semseg.cli``
translates it).
"""
