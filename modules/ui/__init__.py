"""Gradio UI: one module per tab, `layout.build_demo` puts them together."""
