"""One module per CLI verb (or verb group); each exposes ``register(cli)``.

The CLI imports a module when one of its verbs runs (``builder.cli.VERBS`` maps verbs to
modules); a new module here is found without that entry, so a new verb is one new file.
"""
