"""Features or discrete units of many audio files, from disk to disk (the engine of ``spidr-hf extract``).

One file per concern:

* inputs: :func:`spidr_hf.sources.collect_inputs` (files, folders, manifests, saved datasets, and
  the output id of each);
* :mod:`.options`: what a run is asked for and what it did;
* :mod:`.batching`: length-sorted batches under a budget of padded samples, decoded in workers;
* :mod:`.windows`: long files in overlapping windows, and the stitching rule;
* :mod:`.encoder`: the model, run on standardised waveforms, returning frame representations;
* :mod:`.unit_computer`: head, codeword or k-means units of a file's frames;
* :mod:`.writers`: feature files, unit lines, the record of the options, failures, resuming;
* :mod:`.run`: :func:`extract`, the loop that ties them together;
* :mod:`.sampling`: frames sampled from many files to fit k-means on.

Sharding: ``shard=(i, n)`` keeps every ``n``-th file of the input list sorted by id, starting at
``i``. Under ``accelerate launch`` / ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set)
the CLI shards by rank and uses ``cuda:LOCAL_RANK``::

    accelerate launch --num_processes 8 -m spidr_hf.cli extract MODEL data/ --output-dir out

Frames follow the model's own conv stack (``config.frame_geometry``), for windows as for whole
files; whole-file processing (the default up to 60 s) equals the model's output on the file.
"""

from .batching import default_batch_samples, default_num_workers, length_batches, pad_batch
from .encoder import FrameEncoder, load_model
from .options import DTYPES, ExtractionOptions, ExtractionReport
from .run import extract
from .sampling import sample_frames
from .unit_computer import UnitComputer
from .windows import WINDOWED_RELATIVE_TOLERANCE, Window, plan_windows

__all__ = [
    "DTYPES",
    "WINDOWED_RELATIVE_TOLERANCE",
    "ExtractionOptions",
    "ExtractionReport",
    "FrameEncoder",
    "UnitComputer",
    "Window",
    "default_batch_samples",
    "default_num_workers",
    "extract",
    "length_batches",
    "load_model",
    "pad_batch",
    "plan_windows",
    "sample_frames",
]
