"""ONNX / torch.export of registered models, and the onnxruntime backend."""

import pytest
import torch

from mit_semseg.deploy.export import export_onnx, export_program, inference_network
from mit_semseg.inference.predict import PredictOptions, predict_probs
from mit_semseg.models import build_segmentation_model

CPU = torch.device("cpu")
NUM_CLASS = 6
ODD_SIZES = [(33, 47), (67, 93), (45, 121)]


def _model(encoder, decoder):
    module = build_segmentation_model(encoder, decoder, NUM_CLASS).eval()
    # non-trivial eval statistics, so that the folding in the export is really exercised
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module


@pytest.fixture(scope="module")
def onnxruntime():
    return pytest.importorskip("onnxruntime", reason="ONNX tests need pip install "
                               "'mit_semseg[onnx]' (onnx, onnxscript, onnxruntime)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, onnxruntime):
    """``(encoder, decoder) -> (module, path of its ONNX export)``, each exported once."""
    cache = {}

    def get(encoder, decoder):
        if (encoder, decoder) not in cache:
            torch.manual_seed(0)
            module = _model(encoder, decoder)
            path = tmp_path_factory.mktemp("onnx") / f"{encoder}-{decoder}.onnx"
            cache[encoder, decoder] = module, export_onnx(module, path,
                                                          {"arch_encoder": encoder})
        return cache[encoder, decoder]

    return get


# PPM and UPerNet (adaptive pooling with a dynamic input size), deep-supervision heads, C1;
# MobileNetV2 keeps the export fast. Each ONNX export takes ~15 s, so only PPM (the hard
# case) is in the default run; CI runs the others with -m slow.
PAIRS = [("mobilenetv2dilated", "ppm_deepsup"),
         pytest.param("mobilenetv2dilated", "upernet_lite", marks=pytest.mark.slow),
         pytest.param("resnet18dilated", "c1_deepsup", marks=pytest.mark.slow)]


@pytest.mark.parametrize("encoder,decoder", PAIRS)
def test_onnx_probabilities_equal_eager_at_odd_sizes(exported, encoder, decoder):
    import onnx

    from mit_semseg.deploy.onnxruntime import OnnxRuntimeSegmenter

    module, path = exported(encoder, decoder)
    proto = onnx.load(path)
    assert not [i.name for i in proto.graph.initializer if "deepsup" in i.name]
    assert not [n.op_type for n in proto.graph.node if "Pool" in n.op_type
                and n.op_type != "MaxPool"]  # adaptive pooling became matrix products
    segmenter = OnnxRuntimeSegmenter(path, threads=1)
    assert segmenter.num_class == NUM_CLASS and segmenter.metadata["arch_encoder"] == encoder
    for size in ODD_SIZES:
        image = torch.randn(1, 3, *size)
        with torch.inference_mode():
            expected = module({"img_data": image}, segSize=size)
        torch.testing.assert_close(segmenter.probabilities(image), expected, rtol=0, atol=1e-4)
        seg_size = (size[0] + 10, size[1] - 7)
        with torch.inference_mode():
            expected = module({"img_data": image}, segSize=seg_size)
        torch.testing.assert_close(segmenter({"img_data": image}, segSize=seg_size), expected,
                                   rtol=0, atol=1e-4)


@pytest.mark.slow
def test_onnxruntime_backend_in_multi_scale_prediction(exported):
    from mit_semseg.deploy.onnxruntime import OnnxRuntimeSegmenter

    module, path = exported("mobilenetv2dilated", "ppm_deepsup")
    segmenter = OnnxRuntimeSegmenter(path)
    imgs = [torch.randn(1, 3, 41, 57), torch.randn(1, 3, 57, 79)]
    expected = predict_probs(module, imgs, (45, 63), CPU, PredictOptions(flip=True))
    got = predict_probs(segmenter, imgs, (45, 63), CPU, PredictOptions(flip=True))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_onnxruntime_backend_refuses_a_foreign_model(tmp_path, onnxruntime):
    import onnx
    from onnx import TensorProto, helper

    from mit_semseg.deploy.onnxruntime import OnnxRuntimeSegmenter

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    # an IR version and opset that every onnxruntime release we support reads
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="expected input 'image'"):
        OnnxRuntimeSegmenter(tmp_path / "other.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxRuntimeSegmenter(tmp_path / "missing.onnx")


def test_torch_export_program_has_dynamic_size(tmp_path):
    module = _model("mobilenetv2dilated", "ppm_deepsup")
    program = torch.export.load(export_program(module, tmp_path / "m.pt2")).module()
    for size in ODD_SIZES:
        image = torch.randn(1, 3, *size)
        with torch.inference_mode():
            expected = module({"img_data": image}, segSize=size)
            logits, probs = program(image)
        assert logits.shape[1] == NUM_CLASS and logits.shape[2] < size[0]
        torch.testing.assert_close(probs, expected, rtol=0, atol=1e-4)


def test_inference_network_leaves_the_module_alone():
    module = _model("resnet18dilated", "c1_deepsup")
    keys = set(module.state_dict())
    network = inference_network(module, for_onnx=True)
    assert set(module.state_dict()) == keys
    assert not any("deepsup" in k or "running_mean" in k for k in network.state_dict())


