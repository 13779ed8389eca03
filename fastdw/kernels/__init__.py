"""Kernel implementations of the fastdw ops, one module (or package) per backend."""
