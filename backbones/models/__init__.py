"""Model families of ``backbones``, one file per family."""
