"""The next-token explorer tab, in three files: layout (components), views (plain
values -> what components show) and handlers (events -> tasks). modules/ui/explorer_tab.py
puts them together."""
