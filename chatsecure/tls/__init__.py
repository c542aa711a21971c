"""Certificates, the trust store and the TLS policy."""
