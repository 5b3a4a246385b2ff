"""Demo data for the shared database: N tenants of skewed (Zipf-like) sizes, built server-side
(`manage.py seed_demo`, and the benchmarks' tenants).

Every row is made by `INSERT ... SELECT ... FROM generate_series(...)`: no row crosses the
wire, and the same seed gives byte-identical rows (even ids repeat on the same starting
state). The package, by concern:

- vocabulary.py: word lists and per-seed JSON catalogs;
- generation.py: the SQL that makes each shop table's rows;
- rows.py: one tenant's rows, table after table, in chunks;
- tenants.py: which tenants (names, Zipf sizes, the demo marker) and their reset;
- tables.py: the shop tables in the engine's foreign-key order, row counts;
- load.py: seed() and fill_tenant(): the transaction, the lock, the engine's index and
  foreign-key deferral and sequence setting.
"""
from .load import SeedResult, fill_tenant, seed
from .tables import raw_connection, shop_models, shop_specs, shop_tables, tenant_row_counts
from .tenants import DEMO_MARKER, SeedError, TenantSeed, demo_tenant_names, demo_tenants, plan

__all__ = ["DEMO_MARKER", "SeedError", "SeedResult", "TenantSeed", "demo_tenant_names", "demo_tenants",
           "fill_tenant", "plan", "raw_connection", "seed", "shop_models", "shop_specs", "shop_tables",
           "tenant_row_counts"]
