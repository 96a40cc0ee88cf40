"""Compression: structured pruning, int8 quantization, latency-budget fitting, ONNX export, the compression stages."""
