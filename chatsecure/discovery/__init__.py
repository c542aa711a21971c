"""Finding servers on the local network over mDNS/DNS-SD.

``records`` holds the pure parts (service type, TXT, names); ``mdns`` the zeroconf
``Advertiser`` and ``Browser``. Import ``mdns`` only where discovery is wanted: it loads
zeroconf.
"""
