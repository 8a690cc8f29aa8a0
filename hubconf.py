"""torch.hub entry points: one per released ADE20K model (``mit_semseg/models/zoo.py``).

    import torch
    model = torch.hub.load("<owner>/<repo>", "ade20k_resnet50dilated_ppm_deepsup")
    model = torch.hub.load("path/to/clone", "ade20k_hrnetv2_c1", source="local")
    print(torch.hub.list("path/to/clone", source="local"))

Entry names are the zoo names with ``-`` written as ``_``. ``pretrained=True`` (the default)
fetches the released weights into the cache (``$MIT_SEMSEG_HOME`` or ``$TORCH_HOME/mit_semseg``;
``$MIT_SEMSEG_MODEL_MIRROR`` selects a mirror) and returns the model in eval mode;
``pretrained=False`` returns the same architecture with random weights.
"""

import mit_semseg.models.zoo as _zoo

# third-party modules the entry points import (checked by torch.hub before loading)
dependencies = ["torch", "numpy", "cv2", "tqdm", "filelock"]


def _entry(model: _zoo.PretrainedModel):
    """The hub function of one zoo model, with a docstring for ``torch.hub.help``."""

    def load(pretrained: bool = True, **kwargs):
        if pretrained:
            return _zoo.from_pretrained(model.name, **kwargs)
        if kwargs:
            raise TypeError(f"pretrained=False takes no other arguments, got {sorted(kwargs)}")
        return _zoo.build_model(model.name)

    load.__name__ = load.__qualname__ = model.hub_name
    load.__doc__ = f"""{model.arch_encoder} encoder + {model.arch_decoder} decoder trained on \
ADE20K ({model.num_class} classes), released with the original as {model.name} \
(epoch {model.epoch}, config/{model.config}.yaml).

    Published ADE20K validation scores: mIoU {model.single_scale.miou:.2f} / pixel accuracy \
{model.single_scale.pixel_acc:.2f} % single-scale, {model.multi_scale.miou:.2f} / \
{model.multi_scale.pixel_acc:.2f} % multi-scale.

    Args:
        pretrained: load the released weights (fetched and cached on first use, SHA-256
            checked) and return the model in eval mode; False: random weights, train mode.
        device: (pretrained only) where to put the model, default "cpu".
        cache_dir, mirror, progress: (pretrained only) see mit_semseg.models.zoo.fetch.

    Returns:
        mit_semseg.models.SegmentationModule; ``model.predict(images, seg_size)`` gives class
        probabilities (B, {model.num_class}, H, W); ``model.class_names`` and ``model.palette``
        (RGB, the standard ADE20K colours) describe the classes.
    """
    return load


# One public function per zoo model, generated from the table so the two never disagree.
for _model in _zoo.MODELS.values():
    globals()[_model.hub_name] = _entry(_model)
del _model
