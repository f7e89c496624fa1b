"""The next-token explorer's views, one file each, plain values in and out.

The core (distributions, stepping with the cache, surprise of the prompt) is
modules/tasks/next_token.py; these views build on it and run an extra pass only
when asked.
"""
