"""Thin HTTP handlers, one module per spec tag: arguments in, one service call, out."""
