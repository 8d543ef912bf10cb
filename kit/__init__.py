"""The machinery the kit's scripts share, one module per concern (see README: where things live)."""
