"""The chat tab's parts: display.py (messages as the Chatbot shows them) and
handlers.py (handlers and wiring). The layout is modules/ui/chat_tab.py."""
