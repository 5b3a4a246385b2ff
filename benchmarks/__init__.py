"""Benchmarks and demo data, outside the product: they use only the public functions of
`migration_jobs` (services, engine) and `tenancy`, and the demo app's models."""
