"""SmoothGrad saliency maps for PyTorch models."""
