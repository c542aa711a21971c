"""The wire protocol, free of I/O: bytes in, typed messages out, and back."""
