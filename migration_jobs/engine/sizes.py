"""How big each tenant is, from PostgreSQL's own statistics where an exact count would be
slow (the candidates list), or counted exactly on request.

- Shared tables: a table's live rows are the planner's estimate, `reltuples / relpages` times
  its current number of pages (so growth since the last ANALYZE shows); a tenant's share of
  them comes from `pg_stats` of the `tenant_id` column: its frequency in
  `most_common_vals`/`most_common_freqs`, or, for a tenant not in that list, the rest of the
  rows (1 - sum of the frequencies - null fraction) spread evenly over the other distinct
  values (`n_distinct`). Its size is its rows times the table's bytes per row on disk
  (`pg_total_relation_size` / rows: heap, TOAST and indexes).
- A dedicated schema or database: its own tables' row estimates (same rule) and
  `pg_total_relation_size`.
- A table without statistics (never analyzed) is counted exactly, so a figure is never a
  guess from nothing; each result says whether any part of it came from statistics.

Plain functions over psycopg connections; identifiers through psycopg.sql only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from migration_jobs.engine.tables import row_counts


@dataclass(frozen=True)
class TableStats:
    name: str
    rows: float | None      # the planner's live-row estimate; None: no statistics
    total_bytes: int        # pg_total_relation_size: heap + TOAST + indexes

    @property
    def bytes_per_row(self) -> float:
        return self.total_bytes / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class TenantColumn:
    """pg_stats of a table's tenant_id column."""
    frequencies: dict[int, float]   # most common tenant ids -> fraction of the rows
    n_distinct: float               # distinct tenant ids (absolute)
    null_frac: float
    bounds: tuple[int, ...] = ()    # histogram_bounds: equal shares of the other rows

    def fractions(self, known_ids) -> dict[int, float]:
        """{tenant id: fraction of the table's rows} for every id of `known_ids`.

        An id in the most-common list has its frequency. The other rows (1 - frequencies -
        nulls) are spread over the histogram's buckets, equal shares, and each bucket's share
        over the known ids inside it, as the planner reads a histogram; ids outside every
        bucket were not even sampled and get none. Without a histogram, evenly over the
        other distinct values (n_distinct)."""
        rest = max(0.0, 1.0 - sum(self.frequencies.values()) - self.null_frac)
        out = {tid: self.frequencies.get(tid, 0.0) for tid in known_ids}
        others = sorted(tid for tid in out if tid not in self.frequencies)
        if rest <= 0 or not others:
            return out
        if len(self.bounds) >= 2:
            weight = dict.fromkeys(others, 0.0)
            for lo, hi in zip(self.bounds, self.bounds[1:]):
                inside = [tid for tid in others if lo <= tid <= hi]
                for tid in inside:
                    weight[tid] += 1.0 / len(inside)
            total = sum(weight.values())
            if total:
                out.update({tid: rest * w / total for tid, w in weight.items()})
                return out
        spread = self.n_distinct - len(self.frequencies)
        if spread >= 1:
            out.update({tid: rest / spread for tid in others})
        return out


@dataclass
class Figures:
    """A tenant's rows and bytes; `estimated`: some part comes from statistics."""
    rows: int = 0
    size_bytes: int = 0
    estimated: bool = False
    tables: dict[str, int] = field(default_factory=dict)


def table_stats(conn, schema: str, names) -> dict[str, TableStats]:
    """{table: TableStats} for those of `names` that exist in `schema`."""
    found = conn.execute(
        """SELECT c.relname, c.reltuples, c.relpages,
                  pg_relation_size(c.oid) / current_setting('block_size')::float8 AS pages_now,
                  pg_total_relation_size(c.oid)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')""",
        (schema, list(names))).fetchall()
    stats = {}
    for name, reltuples, relpages, pages_now, total in found:
        if reltuples < 0 or (relpages == 0 and pages_now > 0):
            rows = None  # never analyzed, or analyzed while empty: no density to go by
        elif relpages > 0:
            rows = reltuples / relpages * pages_now  # what the planner does (estimate_rel_size)
        else:
            rows = float(reltuples)
        stats[name] = TableStats(name, rows, int(total))
    return stats


def tenant_columns(conn, schema: str, names) -> dict[str, TenantColumn]:
    """{table: TenantColumn} for the tables of `names` with statistics of tenant_id."""
    found = conn.execute(
        """SELECT DISTINCT ON (tablename) tablename, most_common_vals::text::bigint[], most_common_freqs,
                  n_distinct, null_frac, c.reltuples, histogram_bounds::text::bigint[]
             FROM pg_stats s
             JOIN pg_namespace n ON n.nspname = s.schemaname
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.tablename
            WHERE s.schemaname = %s AND s.tablename = ANY(%s) AND s.attname = 'tenant_id'
            ORDER BY tablename, s.inherited DESC""",
        (schema, list(names))).fetchall()
    columns = {}
    for name, values, freqs, n_distinct, null_frac, reltuples, bounds in found:
        distinct = -n_distinct * max(reltuples, 0) if n_distinct < 0 else n_distinct
        columns[name] = TenantColumn(dict(zip(values or [], freqs or [])), float(distinct), float(null_frac),
                                     tuple(bounds or ()))
    return columns


def counts_by_tenant(conn, schema: str, names) -> dict[str, dict[int, int]]:
    """{table: {tenant_id: rows}} counted exactly, one scan per table, in one query."""
    names = list(names)
    if not names:
        return {}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {n}, tenant_id, count(*) FROM {t} GROUP BY tenant_id").format(
            n=sql.Literal(name), t=sql.Identifier(schema, name)) for name in names)
    counts = {name: {} for name in names}
    for name, tenant_id, n in conn.execute(query).fetchall():
        counts[name][tenant_id] = int(n)
    return counts


def shared_figures(conn, schema: str, names, tenant_ids, *, exact: bool = False, known_ids=()) -> dict[int, Figures]:
    """{tenant_id: Figures} of tenants whose rows are in the shared tables (`schema`, normally
    public). Estimated from statistics; tables without them, or all with `exact`, counted.
    `known_ids`: every tenant id that may have rows there (moved tenants keep legacy rows),
    over which statistics spread the rows of the less common ids."""
    stats = table_stats(conn, schema, names)
    columns = {} if exact else tenant_columns(conn, schema, stats)
    to_count = [n for n in stats if exact or stats[n].rows is None or n not in columns]
    counted = counts_by_tenant(conn, schema, to_count)
    figures = {tid: Figures() for tid in tenant_ids}
    known = set(known_ids) | set(figures)
    for name, table in stats.items():
        if name in counted:
            total_rows = sum(counted[name].values())
            per_row = table.total_bytes / total_rows if total_rows else 0.0
        else:
            per_row = table.bytes_per_row
            fractions = columns[name].fractions(known)
        for tid, fig in figures.items():
            if name in counted:
                rows = counted[name].get(tid, 0)
            else:
                rows = round(fractions[tid] * table.rows)
                fig.estimated = True
            fig.tables[name] = rows
            fig.rows += rows
            fig.size_bytes += round(rows * per_row)
    return figures


def place_figures(conn, place, names, tenant_id: int, *, exact: bool = False) -> Figures:
    """Figures of a tenant that has a place of its own (a dedicated schema or database):
    every row of its tables is the tenant's; the size is its tables' size on disk."""
    stats = table_stats(conn, place.schema, names)
    to_count = [n for n in stats if exact or stats[n].rows is None]
    counted = row_counts(conn, place, to_count, tenant_id) if to_count else {}
    fig = Figures(size_bytes=sum(t.total_bytes for t in stats.values()))
    for name, table in stats.items():
        if name in counted:
            rows = counted[name]
        else:
            rows = round(table.rows)
            fig.estimated = True
        fig.tables[name] = rows
        fig.rows += rows
    return fig
