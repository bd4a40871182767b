"""Built-in layers, each written once by its forward definition (see derive.graph)."""
