"""`wit-stats`: DuckDB report over a built corpus."""
