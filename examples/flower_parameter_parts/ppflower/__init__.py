"""The random parameter-part protocol (secagg) as a Flower App."""
