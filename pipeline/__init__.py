"""The Beam curation job of WIT Builder (`wit-build`) and its report (`wit-stats`).

Importing this package does not import Beam; stage modules do.
"""
