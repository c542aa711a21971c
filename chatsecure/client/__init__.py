"""Clients: the headless core every front end shares, and the terminal client."""
