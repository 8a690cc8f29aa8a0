"""mit_semseg: semantic segmentation / scene parsing on ADE20K and friends.

Checkpoint- and config-compatible with the original ``mit_semseg`` 1.0.0 package,
runnable on CPU, on one or many GPUs and across nodes.
"""

__version__ = "1.1.0"
