"""What a trained model is worth: verification accuracy, int8 quantization, latency, reports."""
