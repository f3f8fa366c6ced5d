"""The fused codebook kernels: codeword assignment with statistics, and the head loss.

They live in ``spidr_hf.modeling`` (``codebook_assign.py``, ``codebook_head_loss.py``,
``kernel_dispatch.py``) because the pretraining model uses them and ``modeling/`` ships as remote
code with everything it imports. Each op runs Triton on CUDA tensors when Triton is importable and
a plain-PyTorch reference otherwise (``backend="auto"``); ``backend="triton"`` or ``"torch"``
forces one.
"""

from ..modeling.codebook_assign import CodebookAssignment, codebook_assign
from ..modeling.codebook_head_loss import codebook_head_loss

__all__ = ["CodebookAssignment", "codebook_assign", "codebook_head_loss"]
