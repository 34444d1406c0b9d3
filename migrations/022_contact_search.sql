-- Contact search (service/reporting/contact_search.py).
--
-- By part of a customer's name: a trigram index lets `display_name ILIKE '%part%'` skip the
-- scan of every customer, which grows with the directory (a whole name: 23 ms for 53,000
-- customers on the 1M-event benchmark log, 1.7 ms with the index: load_tests/REPORTS.md).
-- pg_trgm ships with PostgreSQL and is a trusted extension: the database's owner may create it.
-- Where the service's role may not (or a build left contrib out) the search still works, by a
-- scan of the directory: the migration says so and goes on rather than stop the service.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
    RAISE WARNING 'pg_trgm unavailable (%): contact search by name scans the customers', SQLERRM;
END $$;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX customers_display_name_trgm ON customers
            USING gin (display_name gin_trgm_ops);
    END IF;
END $$;

-- By channel, contact type or outcome over a window: the facts keep them inside fact_mark
-- values, which PostgreSQL has no statistics of, so it guessed every such filter matches a
-- handful of rows and read the window's every contact rather than the newest of the index
-- until a page was full. Statistics of the three values let it tell a common filter from a
-- rare one (ANALYZE, and autovacuum after it, keep them).
CREATE STATISTICS contact_facts_channel ON ((started).value) FROM contact_facts;
CREATE STATISTICS contact_facts_type ON ((contact_type).value) FROM contact_facts;
CREATE STATISTICS contact_facts_outcome ON ((ending).value) FROM contact_facts;
ANALYZE contact_facts;
