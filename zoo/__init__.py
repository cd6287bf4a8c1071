"""Scripts that collect, ship and report the zoo's own results (run from the repository root
as ``python -m zoo.<script>``)."""
