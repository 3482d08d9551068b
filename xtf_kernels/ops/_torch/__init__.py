"""Pure-PyTorch backend: runs on any device torch runs on, CPU included."""
