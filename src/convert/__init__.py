"""Weights and models in other formats: official PyTorch ``.pth`` <-> MindSpore ``.ckpt`` (the name
mapping, safe reading of PyTorch files, both directions with their checks), and the deployment
files MINDIR and ONNX."""
