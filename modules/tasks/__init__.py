"""What the app does (chat, translation, sentiment, next-token exploration), with plain
values in and out. No Gradio, no HTTP: the UI, the /v1 API and the benchmarks all call these."""
