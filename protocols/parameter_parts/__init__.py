"""The random parameter-part protocol: part selection, upload policies, local and server updates."""
