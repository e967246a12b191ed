"""trashlib: a reproducible workbook for small, fast trash classifiers."""

import warnings

__version__ = "0.1.0"

# Library warnings that say nothing about this project's results, filtered by message so that any other stays visible:
# - tqdm falls back to text bars when ipywidgets is missing; the workbook runner disables bars in any case.
warnings.filterwarnings("ignore", message=r"IProgress not found")
# - torch.utils.cpp_extension on CPU-only machines (imported by torchao and torch-pruning): no CUDA is expected here.
warnings.filterwarnings("ignore", message=r"No CUDA runtime is found")
# - onnxscript/torch.onnx register pytree nodes through a name torch deprecated; nothing here calls it.
warnings.filterwarnings("ignore", message=r".*_register_pytree_node.* is deprecated")
