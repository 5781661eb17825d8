"""`builder outdated`: what upstream has released since the matrix was written, and safe bumps.

One module per concern: ``web`` (HTTP, GitHub pagination and rate limits), ``versions`` (tags to
the matrix's version forms), ``families`` (which registry tags belong to a base's tag family),
``registry`` (tag lists and image configs through builder.lock's registry client), ``efa`` and
``gpg`` (finding, downloading and verifying EFA installers), ``upstream`` (asking every source),
``plan`` (the bumps as matrix edits, each re-validated), ``report`` (table and JSON).
"""
