"""Export: ONNX, precision passes, quantization, parity, model cards."""
