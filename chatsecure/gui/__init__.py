"""The Tk desktop client (``chatsecure gui``)."""
