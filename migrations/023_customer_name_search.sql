-- Contact search by part of a customer's name (service/reporting/contact_search.py): a trigram
-- index lets `display_name ILIKE '%part%'` skip the scan of every customer, which grows with
-- the directory (a whole name: 23 ms for 53,000 customers on the 1M-event benchmark log,
-- 1.7 ms with the index: load_tests/REPORTS.md). pg_trgm ships with PostgreSQL and is a trusted
-- extension: the database's owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX customers_display_name_trgm ON customers USING gin (display_name gin_trgm_ops);
