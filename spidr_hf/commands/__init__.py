"""Sub-commands of the ``spidr-hf`` CLI (see :mod:`spidr_hf.cli`)."""
