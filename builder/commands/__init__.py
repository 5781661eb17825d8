"""One module per CLI verb (or verb group); each exposes ``register(cli)``.

The CLI imports every module here in name order, so a new verb is one new file.
"""
