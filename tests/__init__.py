"""The test suite (a package, so that `tests.*` imports find it before any installed `tests`)."""
