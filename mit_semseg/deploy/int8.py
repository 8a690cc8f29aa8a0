"""int8 inference on CPUs with int8 dot-product units (``MODEL.precision int8``).

The network up to the class scores runs with int8 weights and activations; the full-size tail
(upsampling, softmax, averaging the scales) stays in float32, by bands
(:mod:`mit_semseg.inference.banded_tail`). The route, PT2E static quantization from torchao
compiled by inductor, was chosen by measurement against onnxruntime's ``quantize_static``
(``benchmarks/bench_int8.py``, RESULTS.md section *int8_route*):

1. :func:`quantizable_network`: BatchNorm folded, deep supervision dropped and adaptive pooling
   written as matrix products (:func:`mit_semseg.deploy.export.inference_network`): inductor's
   own adaptive-pooling kernel is specialised to the input size, which would recompile the
   network for every image size. The PPM and UPerNet heads take their factored forms
   (:func:`mit_semseg.models.decoders.factored.factor_decoders`), as in fp32 fast inference:
   the fusion convolution reads only the finest map in int8 (a half of PPM's plain fusion,
   a quarter of UPerNet's), the kernel taps apply to the smaller maps as int8 1x1
   convolutions, and their resampling (matrix products with bilinear weights,
   :class:`~mit_semseg.models.decoders.factored.TapResampling`) stays float32, unquantized.
2. :func:`calibrate_int8`: ``torch.export`` with a dynamic height and width, torchao's
   ``prepare_pt2e`` with its ``X86InductorQuantizer`` (int8 per-channel weights, uint8
   per-tensor activations, histogram observers), then forward passes over calibration images
   (:class:`CalibrationSet`: images of a sample list at the evaluation scales). What it
   learns is the observers' state, a few hundred kilobytes.
3. :func:`int8_segmenter`: the same export and preparation, the observers' state loaded,
   ``convert_pt2e``, then ``torch.compile(dynamic=True)`` with inductor's freezing, which
   fuses each quantize / convolution / dequantize chain into one oneDNN int8 convolution
   (VNNI or AMX instructions). The shapes stay symbolic, so one compilation serves every
   image large enough (short side >= 256 px, as at ADE20K's test scales): below that, a few
   more graphs may be compiled, one each time some convolution's input passes 20480 values
   (PyTorch's rule for sending a float convolution to oneDNN, which the compiled graph
   guards on). The weights are laid out for the first compiled input's shape
   (:func:`_hint_int8_weight_layouts`): without a shape, oneDNN would reorder every 1x1
   kernel on every call.

:func:`cached_int8_calibration` keeps the observers' state per model, weights, calibration
images and machine, like the ONNX cache (:func:`mit_semseg.deploy.onnxruntime.cached_onnx_export`),
and :class:`Int8Model` is the :class:`~mit_semseg.inference.trained_model.TrainedModel` the
scripts run with it. torchao is an optional extra: ``pip install 'mit_semseg[int8]'``. On a CPU
without int8 units (AMX-INT8, AVX-512 VNNI or AVX-VNNI) int8 is refused
(:func:`int8_unavailable`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch._inductor.config as inductor_config
from torch import nn
from tqdm import tqdm

from mit_semseg.data.datasets import TestDataset
from mit_semseg.data.odgt import list_images, read_odgt
from mit_semseg.deploy.export import example_and_dims, inference_network
from mit_semseg.download import cache_root, sha256_file
from mit_semseg.files import atomic_write, exclusive_lock
from mit_semseg.inference.banded_tail import LogitsSegmenter
from mit_semseg.inference.fast_path import LogitsNetwork
from mit_semseg.inference.trained_model import TrainedModel
from mit_semseg.models.decoders.factored import TapResampling, factor_decoders

__all__ = [
    "INSTALL_HINT",
    "INT8_UNITS",
    "MIN_SIZE",
    "CalibrationSet",
    "Int8Model",
    "cached_int8_calibration",
    "calibrate_int8",
    "int8_cache_path",
    "int8_model",
    "int8_segmenter",
    "int8_unavailable",
    "int8_units",
    "quantizable_network",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mit_semseg[int8]'"
# CPU capability (torch.cpu.get_capabilities) -> name of the int8 dot-product unit
INT8_UNITS = {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI"}
# Part of the cache key: raise it when the graph, the quantizer settings or the saved state
# change.
_FORMAT = ("export(matrix pooling, factored PPM and UPerNet heads) -> X86InductorQuantizer "
           "static, int8 taps, float resampling -> observer states v3")
_OBSERVER_PREFIX = "activation_post_process_"
# torch._dynamo.utils.counters group of what this module's compiler pass did (tests read it)
COUNTER_GROUP = "mit_semseg"
# the export's example input; its size is dynamic in the graph, from MIN_SIZE px per side (the
# stride-32 encoders give torch.export a guard at 33 px; the scripts' scales are far above)
_EXAMPLE_SIZE = (97, 131)
MIN_SIZE = 64


def int8_units() -> list[str]:
    """Names of the int8 dot-product units of this CPU (``INT8_UNITS``), empty if none."""
    capabilities = torch.cpu.get_capabilities()
    return [name for flag, name in INT8_UNITS.items() if capabilities.get(flag)]


def int8_unavailable(device: torch.device | str = "cpu") -> str | None:
    """Why int8 inference cannot run on ``device`` here (one sentence), or None if it can.

    It needs the CPU (oneDNN's int8 kernels), torchao, an x86-64 CPU (the quantizer is
    x86's) and an int8 dot-product unit. Without one, oneDNN's int8 convolutions multiply
    pairs of 8-bit values into saturating 16-bit sums: with oneDNN held to AVX2
    (``ONEDNN_MAX_CPU_ISA``) int8 cost the demo model 0.53 mIoU point (0.8238 -> 0.8185),
    against +0.06 with VNNI (benchmarks/RESULTS.md, sections ``precision_int8@*`` and
    ``precision_int8_no_vnni@*``), so it is refused there.
    """
    device = torch.device(device)
    if device.type != "cpu":
        return f"int8 inference runs on the CPU, not on {device}"
    if importlib.util.find_spec("torchao") is None:
        return f"int8 inference needs torchao: {INSTALL_HINT}"
    capabilities = torch.cpu.get_capabilities()
    if capabilities.get("architecture") != "x86_64":
        return (f"int8 inference needs an x86-64 CPU (its quantizer is x86's); this one is "
                f"{capabilities.get('architecture')}")
    if not int8_units():
        return (f"int8 inference needs a CPU with an int8 dot-product unit "
                f"({', '.join(INT8_UNITS.values())}); this {capabilities.get('cpu_name')} has "
                "none")
    return None


def _torchao() -> tuple[Callable, Callable, Any]:
    """torchao's ``prepare_pt2e``, ``convert_pt2e`` and an x86 quantizer (imported on use:
    torchao is an optional extra)."""
    # torchao 0.18 registers an Enum that torch 2.14 warns about at import, on every run
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as error:
        raise ImportError(f"int8 inference needs torchao: {INSTALL_HINT}") from error
    finally:
        pytree_log.setLevel(level)
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    return prepare_pt2e, convert_pt2e, quantizer


@dataclass(frozen=True)
class CalibrationSet:
    """The images that int8 calibration runs, prepared as evaluation prepares them.

    Attributes:
        list_file: an ``.odgt`` list (paths relative to ``root_dataset``, like
            ``DATASET.list_train``), or an image, a folder or a ``.txt`` list of images
            (paths as given, as ``test.py --imgs`` takes them).
        root_dataset: the folder an ``.odgt`` list's paths are relative to.
        images: how many images, evenly spaced over the list (all of a shorter list).
        scales: short sides each image is calibrated at (``DATASET.imgSizes``): the
            activations then span the sizes evaluation runs.
        max_size: cap on the long side (``DATASET.imgMaxSize``).
        padding_constant: sides rounded up to a multiple of it (``DATASET.padding_constant``).

    Raises:
        ValueError: ``images`` is not positive.
    """

    list_file: str | Path
    root_dataset: str | Path = ""
    images: int = 8
    scales: tuple[int, ...] = (300, 375, 450, 525, 600)
    max_size: int = 1000
    padding_constant: int = 8

    def __post_init__(self) -> None:
        if self.images <= 0:
            raise ValueError(f"the number of calibration images must be > 0, got {self.images}")

    def image_paths(self) -> list[str]:
        """The chosen images: ``images`` evenly spaced records of the list.

        Raises:
            FileNotFoundError, ValueError: the list is missing or malformed (naming it).
        """
        if str(self.list_file).lower().endswith(".odgt"):
            records, _ = read_odgt(self.list_file, ("fpath_img",))
            paths = [os.path.join(self.root_dataset, r["fpath_img"]) for r in records]
        else:
            paths = list_images(self.list_file)
        count = min(self.images, len(paths))
        return [paths[i * len(paths) // count] for i in range(count)]

    def inputs(self) -> Iterator[torch.Tensor]:
        """Normalised ``(1, 3, h, w)`` images: every chosen image at every scale."""
        options = {"imgSizes": self.scales, "imgMaxSize": self.max_size,
                   "padding_constant": self.padding_constant}
        dataset = TestDataset(self.image_paths(), options)
        for index in range(len(dataset)):
            yield from dataset[index]["img_data"]

    def digest(self) -> str:
        """SHA-256 of the settings and of the content of every chosen image."""
        digest = hashlib.sha256()
        settings = (self.images, self.scales, self.max_size, self.padding_constant)
        digest.update(repr(settings).encode())
        for path in self.image_paths():
            digest.update(bytes.fromhex(sha256_file(path)))
        return digest.hexdigest()


def quantizable_network(segmentation_module: nn.Module) -> LogitsNetwork:
    """``images -> logits`` of an eval-mode copy of ``segmentation_module`` in the form that
    is quantized: BatchNorm folded, no deep supervision, adaptive pooling as matrix products,
    the PPM and UPerNet heads factored (see the module docstring). ``segmentation_module``
    is left unchanged."""
    exported = inference_network(segmentation_module, for_onnx=True)
    factor_decoders(exported)
    return LogitsNetwork(exported.encoder, exported.decoder).eval()


def _float_parts(network: nn.Module) -> list[str]:
    """Names of the submodules the quantizer must leave in float32: the factored heads'
    resampling products, whose bilinear weights and comparisons are no activations."""
    return [name for name, module in network.named_modules()
            if isinstance(module, TapResampling)]


def _prepared(segmentation_module: nn.Module) -> torch.fx.GraphModule:
    """The network exported with a dynamic size and prepared with observers."""
    prepare_pt2e, _, quantizer = _torchao()
    network = quantizable_network(segmentation_module)
    for name in _float_parts(network):
        quantizer.set_module_name_qconfig(name, None)
    example, dims = example_and_dims(_EXAMPLE_SIZE, input_name="images", min_size=MIN_SIZE)
    with torch.no_grad():
        program = torch.export.export(network, (example,), dynamic_shapes=dims, strict=False)
    return prepare_pt2e(program.module(), quantizer)


def calibrate_int8(segmentation_module: nn.Module, inputs: Iterable[torch.Tensor],
                   progress: bool = False) -> dict[str, torch.Tensor]:
    """The observers' state after running ``inputs`` through the prepared network.

    Args:
        segmentation_module: the float model (eval mode, CPU; left unchanged).
        inputs: normalised ``(1, 3, h, w)`` images (e.g. :meth:`CalibrationSet.inputs`).
        progress: show a progress bar.

    Returns:
        ``{observer state key: tensor}``, what :func:`int8_segmenter` needs besides the model.

    Raises:
        ValueError: ``inputs`` is empty.
    """
    prepared = _prepared(segmentation_module)
    count = 0
    with torch.no_grad():  # observers update their buffers in place: not inference_mode
        for image in tqdm(inputs, desc="int8 calibration", unit="input", disable=not progress):
            prepared(image)
            count += 1
    if count == 0:
        raise ValueError("int8 calibration needs at least one image")
    return {key: value.detach().clone() for key, value in prepared.state_dict().items()
            if key.startswith(_OBSERVER_PREFIX)}


def _quantized(segmentation_module: nn.Module, states: dict[str, torch.Tensor]
               ) -> torch.fx.GraphModule:
    """The converted (int8) network of ``segmentation_module`` and calibration ``states``."""
    _, convert_pt2e, _ = _torchao()
    prepared = _prepared(segmentation_module)
    expected = {key for key in prepared.state_dict() if key.startswith(_OBSERVER_PREFIX)}
    if set(states) != expected:
        raise ValueError(f"the int8 calibration has {len(states)} observer entries where this "
                         f"model's graph has {len(expected)}: it was made for another model or "
                         "version; delete it to calibrate again")
    prepared.load_state_dict(states, strict=False)
    return convert_pt2e(prepared)


def _size_hint(size: int | torch.SymInt) -> int | None:
    """The example value of a (possibly symbolic) size, None if it has none."""
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return None if hint is None else int(hint)
    return int(size)


@functools.cache
def _hint_int8_weight_layouts() -> None:
    """Registers, once per process, an inductor freezing pass that tells oneDNN's int8
    weight prepacking the input shape of the call being compiled.

    Under a dynamic input size, torchao's prepacking pass passes no input shape
    (``x_shape=None``); oneDNN then lays out 1x1 kernels for a default shape (``AcdB48a4b``
    with AVX-512 VNNI) while the real shapes want another (``AcdB64a4b``), and every call
    reorders every 1x1 kernel with a generic reorder, about 48 ns per weight: 1.0 of 2.4 s
    for ResNet-50 + UPerNet at 512x672 px (seen with ``ONEDNN_VERBOSE=1``). The first
    compiled call's shape is representative (sizes from 16x21 to 256x336 px all wanted the
    same layout), and the weights stay exact: only their layout changes.
    """
    from torch._dynamo.utils import counters
    from torch._inductor.fx_passes.freezing_patterns import register_freezing_graph_pattern
    from torch._inductor.pattern_matcher import Arg, CallFunction, Match

    prepack = torch.ops.onednn.qconv_prepack
    # weight, weight scales, input scale and zero point, stride, padding, dilation (pairs:
    # the matcher compares flattened arguments), groups, and no input shape
    pattern = CallFunction([prepack, prepack.default], Arg(), Arg(), Arg(), Arg(),
                           [Arg(), Arg()], [Arg(), Arg()], [Arg(), Arg()], Arg(), None)

    # after torchao's passes (0 to 3), before freezing folds the prepacking into a constant
    @register_freezing_graph_pattern(pattern, pass_number=8)
    def give_input_shape(match: Match, *args: Any) -> None:
        packing = match.output_node()
        for conv in packing.users:  # onednn.qconv*_pointwise(qx, x_scale, x_zp, packed, ...)
            activation = conv.args[0] if conv.args else None
            value = getattr(activation, "meta", {}).get("val")
            if value is None or value.dim() != 4:
                continue
            shape = [_size_hint(size) for size in value.shape]
            if None not in shape:
                packing.args = (*packing.args[:8], shape)
                counters[COUNTER_GROUP]["int8_weight_layout_hints"] += 1
                return


class _FrozenCompiled:
    """``torch.compile(network, dynamic=True)`` called with inductor's freezing on.

    Freezing must be on when dynamo traces (it then treats the weights as constants), not
    only in inductor's options: otherwise the int8 weight pre-packing runs on fake tensors
    and fails. Calls run without autograd, which freezing needs.
    """

    def __init__(self, network: nn.Module) -> None:
        _hint_int8_weight_layouts()
        self.network = network
        self._compiled = torch.compile(network, dynamic=True)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"int8 inference needs inputs of at least {MIN_SIZE} px per side, "
                             f"got {tuple(images.shape[-2:])} (raise DATASET.imgSizes, or use "
                             "MODEL.precision fp32)")
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return self._compiled(images)


def int8_segmenter(segmentation_module: nn.Module, states: dict[str, torch.Tensor]
                   ) -> LogitsSegmenter:
    """The int8 form of ``segmentation_module`` with the calibration ``states`` of
    :func:`calibrate_int8`, compiled, behind the eager model's inference interface.

    The first call compiles (tens of seconds on a CPU, in every process: inductor's disk
    cache skips graphs with frozen weights); later image sizes reuse it (see the module
    docstring).
    """
    network = _quantized(segmentation_module, states)
    logger.info("int8 network ready (%d observers); it compiles on the first image",
                sum(1 for key in states if key.endswith(".min_val")))
    return LogitsSegmenter(_FrozenCompiled(network))


def _plain(model: TrainedModel) -> TrainedModel:
    """``model`` as a plain float :class:`TrainedModel` (the module as built, no fast path)."""
    # a TrainedModel built anew, not dataclasses.replace: that would keep the subclass
    # (Int8Model), whose load() calls this again
    return TrainedModel(**{**model.plain_fields(), "fast_inference": False})


def int8_cache_path(model: TrainedModel, calibration: CalibrationSet,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`cached_int8_calibration` keeps ``model``'s calibration:
    ``<cache_dir or cache_root()/int8>/<encoder>-<decoder>-<key>.pt``.

    ``key`` hashes the architecture, the class count, the content of both weight files, the
    calibration images and settings (:meth:`CalibrationSet.digest`), the torch and torchao
    versions (which number the observers) and the machine's architecture (the quantizer is
    x86's): new weights or images give a new calibration, the same ones anywhere share one.
    """
    digest = hashlib.sha256()
    versions = f"torch {torch.__version__}, torchao {importlib.metadata.version('torchao')}"
    machine = str(torch.cpu.get_capabilities().get("architecture"))
    for text in (_FORMAT, model.arch_encoder, model.arch_decoder, str(model.num_class),
                 versions, machine, calibration.digest()):
        digest.update(text.encode() + b"\0")
    for path in model.weight_files().values():
        digest.update(bytes.fromhex(sha256_file(path)))
    folder = Path(cache_dir) if cache_dir else cache_root() / "int8"
    return folder / f"{model.arch_encoder}-{model.arch_decoder}-{digest.hexdigest()[:16]}.pt"


def _agreement(module: nn.Module, quantized: nn.Module, image: torch.Tensor) -> str:
    """int8 against float32 on one image, at the scores' resolution, for the log."""
    with torch.no_grad():
        reference = module.eval().logits(image).softmax(1)
        got = quantized(image).softmax(1)
    equal = (got.argmax(1) == reference.argmax(1)).float().mean().item()
    difference = (got - reference).abs().max().item()
    return f"{100 * equal:.2f}% equal labels, probabilities within {difference:.3f}"


def cached_int8_calibration(model: TrainedModel, calibration: CalibrationSet,
                            cache_dir: str | os.PathLike | None = None,
                            progress: bool = False) -> Path:
    """The calibration file of ``model`` on ``calibration``, made on first use (see
    :func:`int8_cache_path`).

    It is published by an atomic rename, so no process ever reads a partial file; a lock
    beside it makes concurrent callers (torchrun ranks) wait for one calibration instead of
    each running one.

    Raises:
        FileNotFoundError: a weight file, the list or a listed image is missing.
        ValueError: a malformed list.
        ImportError: torchao is not installed.
    """
    path = int8_cache_path(model, calibration, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(f"{path}.lock"):
        if path.is_file():
            logger.info("int8 calibration (cached): %s", path)
            return path
        logger.info("calibrating int8 on %d image(s) of %s at scales %s (once; cached as %s)",
                    len(calibration.image_paths()), calibration.list_file,
                    list(calibration.scales), path)
        start = time.perf_counter()
        module = _plain(model).load(torch.device("cpu"))
        states = calibrate_int8(module, calibration.inputs(), progress=progress)
        atomic_write(path, lambda f: torch.save(states, f))
        first = next(calibration.inputs())
        logger.info("calibrated in %.1f s; int8 vs float32 on the first image: %s",
                    time.perf_counter() - start,
                    _agreement(module, _quantized(module, states), first))
    return path


@dataclass(frozen=True)
class Int8Model(TrainedModel):
    """A trained model run in int8 (``MODEL.precision int8``).

    Attributes:
        calibration_file: the observers' state for the weights of :meth:`weight_files` (see
            :func:`cached_int8_calibration`).
    """

    calibration_file: str | Path = ""
    precision: ClassVar[str] = "int8"

    def load(self, device: torch.device) -> LogitsSegmenter:
        """The compiled int8 segmenter (CPU only).

        Raises:
            RuntimeError: int8 cannot run here (:func:`int8_unavailable`).
            FileNotFoundError: a weight file or the calibration file is missing.
        """
        reason = int8_unavailable(device)
        if reason:
            raise RuntimeError(reason)
        if not Path(self.calibration_file).is_file():
            raise FileNotFoundError(f"int8 calibration file not found: {self.calibration_file}")
        module = _plain(self).load(torch.device("cpu"))
        states = torch.load(self.calibration_file, weights_only=True)
        logger.info("running %s and %s in int8 (calibration %s)", *self.weight_files().values(),
                    self.calibration_file)
        return int8_segmenter(module, states)


def int8_model(model: TrainedModel, calibration: CalibrationSet,
               cache_dir: str | os.PathLike | None = None, progress: bool = False) -> Int8Model:
    """``model`` in int8, calibrated on ``calibration`` (or its cached calibration).

    Example::

        model = TrainedModel("resnet50dilated", "ppm_deepsup", 150, "ckpt/run", "epoch_20.pth")
        calibration = CalibrationSet("data/training.odgt", "data/", images=16)
        segmenter = int8_model(model, calibration).load(torch.device("cpu"))
        probs = predict_probs(segmenter, img_list, seg_size, torch.device("cpu"))
    """
    path = cached_int8_calibration(model, calibration, cache_dir, progress)
    return Int8Model(**model.plain_fields(), calibration_file=path)
