"""Export of AudioLDM pipelines to ONNX graphs and TensorRT engines (needs torch, diffusers, transformers)."""

from __future__ import annotations


def quiet_hub_libraries() -> None:
    """Hide diffusers' and transformers' loading progress bars and notices (the deprecation notice of
    AudioLDMPipeline among them): the command line shows its own progress. Errors still show."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
