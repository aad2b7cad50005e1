"""Export AudioLDM checkpoints to ONNX graphs and TensorRT engines (needs the `export` extra)."""
