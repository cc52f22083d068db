"""pathgen_batch: synthetic transcriptomes and multimodal predictions from whole-slide images."""

__version__ = "0.1.0"
