"""Fused kernels for SpidR's online clustering: codeword assignment with statistics, and the head loss.

Each function runs Triton kernels on CUDA tensors when Triton is importable and a plain-PyTorch
reference otherwise (``backend="auto"``); ``backend="triton"`` or ``"torch"`` forces one. Importing
this package works without Triton installed.
"""

from .codebook_assign import CodebookAssignment, codebook_assign
from .head_loss import codebook_head_loss

__all__ = ["CodebookAssignment", "codebook_assign", "codebook_head_loss"]
