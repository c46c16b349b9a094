"""Inference: predictions from a run folder or an export, and exports (safetensors, ONNX)."""
