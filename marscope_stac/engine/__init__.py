"""The query engine: open an embedding set once, score questions and write their products."""
