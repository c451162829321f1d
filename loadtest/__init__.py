"""adchain's load generator: drives publisher traffic through the chain."""
