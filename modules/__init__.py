"""Transformers Playground: logic modules (no Gradio) and the UI package `modules.ui`."""
