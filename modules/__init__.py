"""Transformers Playground. Four layers, imports only go downward:
`ui` / `serving` -> `tasks` -> `engine` -> `config`, `errors` (tests/test_layers.py checks it).
`app_context` wires an engine and tasks together for the two top layers."""
