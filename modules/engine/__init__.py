"""Loads, holds, prepares and runs models: the one model cache, model references,
device and dtype choice, GGUF conversion, the main-thread runner and the CPU kernels.
Knows nothing of tasks, HTTP or Gradio."""
