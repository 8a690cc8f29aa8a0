"""Every configuration key of mit_semseg, with its default and meaning.

This file is the single place where keys are defined. A YAML file (the shipped recipes are in
``mit_semseg/config/files/``, linked from the repository's ``config/``) only overrides values
defined here; yacs rejects any key that does not exist below, so a typo fails loudly.
Keys inherited from the original ``mit_semseg`` 1.0.0 keep their (mixed-case) names so that old
configs and command lines keep working; keys added by this project are snake_case.

Scripts never use ``_C`` directly: they call :func:`mit_semseg.config.load_config`, which merges a
clone of these defaults with a YAML file and ``KEY VALUE`` overrides and freezes the result.
"""

from yacs.config import CfgNode as CN

_C = CN()

# Output folder: checkpoints, log.txt, config.yaml, history and training curves are written here.
_C.DIR = "ckpt/ade20k-resnet50dilated-ppm_deepsup"

# Compute device. Options: "auto" (first CUDA GPU if present, else CPU), "cpu", "cuda",
# "cuda:N". train.py's ``--gpus`` flag overrides it; under torchrun every rank uses
# "cuda:<LOCAL_RANK>" when the device is CUDA.
_C.DEVICE = "auto"

# -----------------------------------------------------------------------------
# Dataset
# -----------------------------------------------------------------------------
_C.DATASET = CN()
# Folder that the image/annotation paths inside the .odgt lists are relative to.
_C.DATASET.root_dataset = "./data/"
# Training list: one JSON record per line with fpath_img, fpath_segm, width, height.
_C.DATASET.list_train = "./data/training.odgt"
# Validation list, same format as list_train.
_C.DATASET.list_val = "./data/validation.odgt"
# Number of classes, not counting "unlabeled" (pixel value 0 in the annotation PNGs, ignored).
_C.DATASET.num_class = 150
# Short-side lengths in pixels. Training: one is drawn at random per per-device batch.
# Validation/testing: the image is evaluated at every size and the probabilities are averaged.
# Must be a tuple, e.g. "(300, 375, 450)" or "(450,)" on the command line.
_C.DATASET.imgSizes = (300, 375, 450, 525, 600)
# Upper bound in pixels on the long side after scaling (the scale is reduced to respect it).
_C.DATASET.imgMaxSize = 1000
# Image sides are rounded up to a multiple of this many pixels (the network's total stride).
# Must be >= segm_downsampling_rate.
_C.DATASET.padding_constant = 8
# Training labels are downsampled by this factor; must equal the decoder's output stride
# (8 for dilated encoders with C1/PPM, 4 for UPerNet and HRNet).
_C.DATASET.segm_downsampling_rate = 8
# Randomly flip training images horizontally (probability 0.5). The original ignored this key and
# always flipped; here False switches flipping off.
_C.DATASET.random_flip = True
# What the scripts check in the sample lists before building a model (train.py: list_train,
# eval.py/eval_multipro.py: list_val). Options: "headers" (every file exists, its header is
# readable, JPEG/PNG files are complete, image, label and list sizes agree, labels have one
# channel; seconds for ADE20K's 20k training images), "full" (also decodes every image and
# label and checks label values <= num_class; minutes for ADE20K), "off".
_C.DATASET.preflight = "headers"
# Images and label maps of more pixels (width x height) than this are refused from their file
# header, before anything is decoded: a "decompression bomb" (a 400 KB PNG can declare
# 20000x20000 pixels, 1.2 GB once decoded, several times that once resized) fails the
# start-up check naming its list line and size, and where it is read later it fails like an
# unreadable file (test.py skips it; training: TRAIN.skip_bad_samples). The default is
# Pillow's own limit (PIL.Image.MAX_IMAGE_PIXELS): about 89.5 million pixels, e.g. 9459x9459
# or a 12000x7450 photo. Raise it for larger pictures; above twice this default Pillow still
# refuses the files it decodes itself (palette-mode label PNGs).
_C.DATASET.max_image_pixels = 89478485

# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
_C.MODEL = CN()
# Encoder architecture, e.g. "resnet50dilated", "resnet18dilated", "mobilenetv2dilated",
# "resnet50", "resnet101", "hrnetv2" (see mit_semseg.models.list_encoders()).
_C.MODEL.arch_encoder = "resnet50dilated"
# Decoder architecture, e.g. "ppm_deepsup", "ppm", "c1_deepsup", "c1", "upernet"
# (see mit_semseg.models.list_decoders()). A "_deepsup" decoder adds the auxiliary loss in training.
_C.MODEL.arch_decoder = "ppm_deepsup"
# Path to an encoder state_dict to start from ("" = none). Loaded strictly.
_C.MODEL.weights_encoder = ""
# Path to a decoder state_dict to start from ("" = none). Loaded strictly.
_C.MODEL.weights_decoder = ""
# Fine-tune from a model trained for other classes ("" = none): the name of a released model
# (mit_semseg.models.zoo.list_models(), fetched and cached like --model), a training run's
# folder (its DIR: last epoch, class names from its object_info.csv), or the name of a run
# published on $MIT_SEMSEG_MODEL_MIRROR. The encoder and every decoder tensor that fits are
# loaded; the classifier rows of each class whose name (or a synonym, case-insensitive) is
# a class of the source are copied, the other classes start fresh; one log line says what
# was loaded and matched (mit_semseg/models/init_from.py, docs/own-data.md). The architecture
# must be the source's. Exclusive with weights_encoder/weights_decoder; TRAIN.pretrained is
# not used then. Only read when a run starts (not on resume).
_C.MODEL.init_from = ""
# Channels of the encoder's last feature map (the decoder's input width). Checked against the
# encoder's declared out_channels.
_C.MODEL.fc_dim = 2048
# Inference only (eval.py, eval_multipro.py, test.py): fold BatchNorm into the convolutions and
# use the channels-last layout (mit_semseg.inference.fast_path.optimize_for_inference); faster on
# CPU, see benchmarks/RESULTS.md. Probabilities differ from the plain model's by float rounding:
# up to 1.3e-4, 99.97% or more equal predictions on the released architectures, the same mIoU on
# the trained demo model (docs/evaluation.md). False = the original's arithmetic, bit for bit.
_C.MODEL.fast_inference = True
# What runs the network in eval.py, eval_multipro.py and test.py. Options: "torch" (PyTorch, any
# device), "onnxruntime" (CPU only; needs pip install 'mit_semseg[onnx]'): on first use the
# weights are exported to ONNX (as mit-semseg-export does), checked against the PyTorch model
# and cached as <cache>/onnx/<architecture>-<hash of the weight files>.onnx, where <cache> is
# $MIT_SEMSEG_HOME or ~/.cache/torch/mit_semseg (docs/evaluation.md). Upsampling, softmax and
# argmax at full resolution stay in PyTorch; VAL.amp / TEST.amp apply to "torch" only.
_C.MODEL.backend = "torch"
# Number format of the network in eval.py, eval_multipro.py and test.py. Options: "fp32", "int8"
# (CPU only, on CPUs with an int8 dot-product unit: AMX-INT8, AVX-512 VNNI or AVX-VNNI; needs
# pip install 'mit_semseg[int8]'): weights and activations in int8 (torchao's PT2E static
# quantization, compiled by torch.compile), calibrated once on MODEL.calibration_images images
# of MODEL.calibration_list at every DATASET.imgSizes scale and cached as
# <cache>/int8/<architecture>-<hash>.pt (hash of the weight files, the calibration images, the
# torch/torchao versions and the CPU architecture); every process compiles on its first image.
# Scores change slightly (docs/evaluation.md#int8-inference); needs MODEL.backend torch,
# MODEL.fast_inference True and VAL.amp / TEST.amp "".
_C.MODEL.precision = "fp32"
# int8 calibration images: an .odgt list (paths relative to DATASET.root_dataset), an image, a
# folder or a .txt list of image paths. "" = DATASET.list_train (images like the training
# data; calibrating on the validation list would tune int8 to the images it is scored on).
_C.MODEL.calibration_list = ""
# How many images of MODEL.calibration_list calibrate int8 (evenly spaced over the list). Each
# runs once at every DATASET.imgSizes scale with observers, at 2-3x the time of an fp32 forward
# pass (benchmarks/RESULTS.md section inference_int8 reports it); once per model, then cached.
_C.MODEL.calibration_images = 8

# -----------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------
_C.TRAIN = CN()
# Images per device (GPU, CPU replica or torchrun process). Total batch = this x devices.
_C.TRAIN.batch_size_per_gpu = 2
# Number of epochs to train for.
_C.TRAIN.num_epoch = 20
# Epoch to start from (original-style resume): > 0 loads DIR/{encoder,decoder}_epoch_<N>.pth and
# restarts the optimizer. Prefer TRAIN.resume, which also restores optimizer and RNG state.
_C.TRAIN.start_epoch = 0
# Iterations per epoch. An "epoch" is a fixed number of steps, not a pass over the data.
_C.TRAIN.epoch_iters = 5000
# Optimizer. Options: "SGD" (the only one; kept for compatibility with the original configs).
_C.TRAIN.optim = "SGD"
# Base learning rate of the encoder's optimizer (decayed by the poly schedule every iteration).
_C.TRAIN.lr_encoder = 0.02
# Base learning rate of the decoder's optimizer. Fine-tuning usually gives the encoder a lower
# rate than the decoder (python -m mit_semseg.data.prepare --init-from writes a tenth).
_C.TRAIN.lr_decoder = 0.02
# Keep the encoder's weights unchanged for the first this many iterations (0 = off): its
# learning rate is 0 and its optimizer takes no step (no momentum builds up), so a freshly
# initialised head settles before it sends gradients into a pretrained encoder. The poly
# schedule then goes on from the current iteration. The encoder's BatchNorm statistics still
# adapt (TRAIN.fix_bn freezes them too), and its gradients are still computed.
_C.TRAIN.freeze_encoder_iters = 0
# Power of the poly schedule: lr = base * (1 - it / max_iters) ** lr_pow.
_C.TRAIN.lr_pow = 0.9
# SGD momentum (named beta1 in the original).
_C.TRAIN.beta1 = 0.9
# L2 weight decay, applied to conv and linear weights only (not to biases or norm layers).
_C.TRAIN.weight_decay = 1e-4
# Weight of the deep-supervision (auxiliary) loss of "_deepsup" decoders.
_C.TRAIN.deep_sup_scale = 0.4
# Loss weight of each class, one per class in label order, e.g. "(1.0, 4.2, 0.7)"; () = all
# equal (the original's loss). For imbalanced data: python -m mit_semseg.data.check LIST
# --num-class N --class-weights prints median-frequency weights from the training pixel
# shares (and python -m mit_semseg.data.prepare --class-weights writes them into its config).
_C.TRAIN.class_weights = ()
# Momentum of the BatchNorm running statistics (every BatchNorm of the model, plain or
# synchronised, in every launch mode): running = (1 - m) * running + m * batch statistic.
# 0.1 (PyTorch's default) forgets the initial statistics within ~50 steps; the original's 0.001
# keeps 61% of them after 500 steps (0.999^500) and needs ~4600 steps to get under 1%, so short
# runs evaluate with statistics that were never measured (the original's multi-GPU SyncBN hid
# this with a bias-corrected average; on one device it used the plain 0.001). -1 = the
# original's values: 0.001, and 0.1 in HRNet's encoder. See docs/training.md.
_C.TRAIN.bn_momentum = 0.1
# Keep the whole model in eval mode while training (frozen BN statistics, no dropout); used
# when fine-tuning with small batches. Parameters are still optimised.
_C.TRAIN.fix_bn = False
# DataLoader worker processes per training process (0 = load in the main process).
_C.TRAIN.workers = 16
# Log every this many iterations (and record a point in the history).
_C.TRAIN.disp_iter = 20
# Random seed for Python, NumPy and torch; torchrun rank r uses seed + r for its data.
_C.TRAIN.seed = 304
# Initialise the encoder with ImageNet weights when MODEL.weights_encoder is empty (the
# original always did; downloaded once into ~/.cache/torch/mit_semseg/pretrained/ or
# $MIT_SEMSEG_PRETRAINED_DIR, see mit_semseg/models/pretrained.py). False = random init.
_C.TRAIN.pretrained = True
# Mixed precision. Options: "" (off, fp32), "bf16" (CPU or CUDA), "fp16" (CUDA only, with a
# gradient scaler).
_C.TRAIN.amp = ""
# Train the PPM and UPerNet heads in their factored form: the part of the 3x3 fusion convolution
# that reads bilinearly upsampled maps (PPM's pooled branches, UPerNet's three coarser FPN maps)
# is computed at those maps' own sizes (mit_semseg/models/decoders/factored.py), and on CPU in
# float32 the heads' wide 3x3 convolutions run in Winograd form (mit_semseg/nn/winograd.py).
# The same weights, checkpoints and BatchNorm; loss and gradients equal the plain form's up to
# float rounding; fewer FLOPs and less time per step (benchmarks/RESULTS.md, sections flops@*
# and train@*). False = the plain form, the original's arithmetic. Other decoders ignore it.
_C.TRAIN.factored_heads = True
# fp16 only: consecutive steps with a non-finite loss that the gradient scaler may skip (it drops
# the update and lowers its scale) before training stops with an error. Without a gradient
# scaler (fp32, bf16) the first non-finite loss stops training.
_C.TRAIN.max_nonfinite_steps = 10
# Bitwise-reproducible training on CUDA: TF32 off, deterministic cuDNN/cuBLAS algorithms
# (CUBLAS_WORKSPACE_CONFIG=:4096:8), torch.use_deterministic_algorithms and deterministic forms of
# the upsampling, pooling and loss kernels. Slower (docs/training.md); CPU runs are deterministic
# either way.
_C.TRAIN.deterministic = False
# Resume a killed run. Options: "" (start fresh), "auto" (DIR/checkpoint_last.pth if it exists,
# else start fresh), or a path to a checkpoint_last.pth-style file (must exist).
_C.TRAIN.resume = ""
# Write the resumable DIR/checkpoint_last.pth every this many iterations (0 = only at the end
# of each epoch). It is always written at the end of an epoch.
_C.TRAIN.checkpoint_every = 500
# Also write it when this many minutes have passed since the last write (0 = off), so that
# a killed or preempted run loses at most this much work whatever the speed of the hardware
# (benchmarks/bench_checkpoint.py measures what a write costs). Also written when the run is
# stopped by SIGINT/SIGTERM.
_C.TRAIN.checkpoint_minutes = 10.0
# A training sample that cannot be loaded (missing, corrupt, mis-sized, label values out of
# range) stops the run with an error naming it (False), or is logged as a warning and replaced
# by another sample of the list (True). The replacement depends only on the seed and the
# iteration, so resumed and multi-process runs stay identical to uninterrupted ones.
_C.TRAIN.skip_bad_samples = False

# -----------------------------------------------------------------------------
# Distributed (torchrun) training
# -----------------------------------------------------------------------------
_C.DIST = CN()
# torch.distributed backend. Options: "auto" (nccl on CUDA, gloo on CPU), "nccl", "gloo".
_C.DIST.backend = "auto"
# Synchronise BatchNorm statistics across devices/processes (SyncBN), as the original did on
# several GPUs. False keeps per-device statistics.
_C.DIST.sync_bn = True

# -----------------------------------------------------------------------------
# Validation (eval.py, eval_multipro.py)
# -----------------------------------------------------------------------------
_C.VAL = CN()
# Images per forward pass. Only 1 (images differ in size); any other value is an error. Kept
# because the original's defaults had it, so config.yaml files its train.py dumped set it.
_C.VAL.batch_size = 1
# Write [image | ground truth | prediction] PNGs to DIR/result/.
_C.VAL.visualize = False
# Checkpoint suffix to evaluate: weights are DIR/encoder_<checkpoint>, DIR/decoder_<checkpoint>.
_C.VAL.checkpoint = "epoch_20.pth"
# Also evaluate the horizontally flipped image and average the probabilities (test-time
# augmentation; the original had none).
_C.VAL.flip = False
# DataLoader worker processes for evaluation.
_C.VAL.workers = 5
# Reduced-precision inference. Options: "" (fp32), "bf16" (CPU or CUDA; fast on CPUs with
# AMX/AVX-512 bf16 units), "fp16" (CUDA only). Changes the numbers slightly (benchmarks/RESULTS.md
# measures by how much on a trained model).
_C.VAL.amp = ""

# -----------------------------------------------------------------------------
# Testing / inference (test.py)
# -----------------------------------------------------------------------------
_C.TEST = CN()
# Images per forward pass; only 1, as VAL.batch_size.
_C.TEST.batch_size = 1
# Checkpoint suffix to run: weights are DIR/encoder_<checkpoint>, DIR/decoder_<checkpoint>.
_C.TEST.checkpoint = "epoch_20.pth"
# Folder for the output visualisations (and label maps with save_label).
_C.TEST.result = "./"
# Sliding-window inference: window side in pixels at each scale (0 = off, whole image at once).
_C.TEST.window_size = 0
# Step between windows in pixels (0 = two thirds of window_size). Only used with window_size > 0.
_C.TEST.window_stride = 0
# Also write the raw predicted label map (uint8/uint16 PNG, value = class index + 1).
_C.TEST.save_label = False
# DataLoader worker processes for inference.
_C.TEST.workers = 5
# Reduced-precision inference, as VAL.amp.
_C.TEST.amp = ""
