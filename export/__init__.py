"""ONNX export of interface models (energy, forces and virial in the graph)."""
