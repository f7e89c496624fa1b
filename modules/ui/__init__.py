"""Gradio only: the page layout and one file per tab. Tabs lay out and wire; the work
they show is done in `modules.tasks`."""
