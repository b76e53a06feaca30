-- What one counted id costs the Postgres server to record, by the shape of the statement and of
-- the key (benches/seen_floor.sh). 300,000 ids of 1,000 tenants (`backlog-N`, as benches/postgres.sh
-- produces them) go into an empty `seen`-shaped table partitioned by arrival, in 30 statements of
-- 10,000, each variant on the emptied table; the server's own time (clock_timestamp around each
-- statement, parameters bound as arrays, planned at each call as the store's unnamed statements
-- are), all in one transaction, so commits are left out.
\set ON_ERROR_STOP on
SET client_min_messages = notice;
DROP TABLE IF EXISTS seen, seen_fp, seen_h, seen_hf, batches, sorted;
CREATE TABLE seen (tenant text COLLATE "C" NOT NULL, id text COLLATE "C" NOT NULL, arrived_us bigint NOT NULL)
  PARTITION BY RANGE (arrived_us);
CREATE TABLE seen_cur PARTITION OF seen (PRIMARY KEY (tenant, id)) FOR VALUES FROM (1000) TO (2000);
CREATE TABLE seen_next PARTITION OF seen (PRIMARY KEY (tenant, id)) FOR VALUES FROM (2000) TO (3000);
-- The same with a 128-bit fingerprint of (tenant, id) as the only key.
CREATE TABLE seen_fp (fp uuid NOT NULL, arrived_us bigint NOT NULL) PARTITION BY RANGE (arrived_us);
CREATE TABLE seen_fp_cur PARTITION OF seen_fp (PRIMARY KEY (fp)) FOR VALUES FROM (1000) TO (2000);
CREATE TABLE seen_fp_next PARTITION OF seen_fp (PRIMARY KEY (fp)) FOR VALUES FROM (2000) TO (3000);
-- No primary key, a hash index: on the key's text, and on the fingerprint.
CREATE TABLE seen_h (tenant text COLLATE "C" NOT NULL, id text COLLATE "C" NOT NULL, arrived_us bigint NOT NULL);
CREATE INDEX ON seen_h USING hash ((tenant || ':' || id));
CREATE TABLE seen_hf (fp uuid NOT NULL, arrived_us bigint NOT NULL);
CREATE INDEX ON seen_hf USING hash (fp);
CREATE TABLE batches AS
  SELECT n / 10000 AS b, array_agg('t' || lpad((n % 1000)::text, 4, '0') ORDER BY n) AS t,
         array_agg('backlog-' || n ORDER BY n) AS i,
         array_agg(md5('t' || lpad((n % 1000)::text, 4, '0') || ':backlog-' || n)::uuid ORDER BY n) AS f
  FROM generate_series(0, 299999) n GROUP BY 1;
-- The same batches with each one's ids in key order (as the store sends them since 88dd921).
CREATE TABLE sorted AS
  SELECT b, (SELECT array_agg(t ORDER BY t, i) FROM unnest(batches.t, batches.i) AS x(t, i)) AS t,
         (SELECT array_agg(i ORDER BY t, i) FROM unnest(batches.t, batches.i) AS x(t, i)) AS i,
         (SELECT array_agg(f ORDER BY f) FROM unnest(batches.f) AS x(f)) AS f
  FROM batches;

-- Runs LOOKUP (unless empty) then INSERT for each batch, parameters $1 tenants, $2 ids, $3 the
-- arrival, $4 the next partition's start, $5 fingerprints; reports each one's total.
CREATE OR REPLACE FUNCTION floor_run(label text, lookup text, ins text, source text DEFAULT 'batches') RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record; t0 timestamptz; tl interval := '0'; ti interval := '0'; n bigint; kept bigint := 0;
BEGIN
  TRUNCATE seen, seen_fp, seen_h, seen_hf;
  FOR r IN EXECUTE format('SELECT t, i, f FROM %I ORDER BY b', source) LOOP
    IF lookup <> '' THEN
      t0 := clock_timestamp();
      EXECUTE 'WITH w AS (' || lookup || ') SELECT count(*) FROM w' INTO n USING r.t, r.i, 1500::int8, 2000::int8, r.f;
      tl := tl + (clock_timestamp() - t0);
    END IF;
    t0 := clock_timestamp();
    EXECUTE 'WITH w AS (' || ins || ') SELECT count(*) FROM w' INTO n USING r.t, r.i, 1500::int8, 2000::int8, r.f;
    ti := ti + (clock_timestamp() - t0);
    kept := kept + n;
  END LOOP;
  RAISE NOTICE '%', format('%-58s %6s ms  %4s µs/id  (%s ids kept)', label,
    round(extract(epoch FROM tl + ti) * 1000), round(extract(epoch FROM tl + ti) * 1e6 / 300000, 2), kept);
END $$;

SELECT floor_run('the store''s statement (text key)', '',
  $q$INSERT INTO seen (tenant, id, arrived_us) SELECT x.tenant, x.id, $3 FROM unnest($1::text[], $2::text[]) AS x(tenant, id)
     LEFT JOIN LATERAL (SELECT 1 AS one FROM seen s WHERE s.tenant = x.tenant AND s.id = x.id AND s.arrived_us >= $4 LIMIT 1) f ON true
     WHERE f.one IS NULL ON CONFLICT DO NOTHING RETURNING tenant, id$q$);
SELECT floor_run('ON CONFLICT only, no other partition (text key)', '',
  $q$INSERT INTO seen (tenant, id, arrived_us) SELECT x.tenant, x.id, $3 FROM unnest($1::text[], $2::text[]) AS x(tenant, id)
     ON CONFLICT DO NOTHING RETURNING tenant, id$q$);
SELECT floor_run('a probe of the partition, then a plain INSERT (text key)',
  $q$SELECT s.id FROM unnest($1::text[], $2::text[]) AS x(tenant, id)
     JOIN LATERAL (SELECT s.id FROM seen_cur s WHERE s.tenant = x.tenant AND s.id = x.id LIMIT 1) s ON true WHERE $3 > 0 AND $4 > 0$q$,
  $q$INSERT INTO seen (tenant, id, arrived_us) SELECT x.tenant, x.id, $3 FROM unnest($1::text[], $2::text[]) AS x(tenant, id) RETURNING id$q$);
SELECT floor_run('a plain INSERT, no check (text key)', '',
  $q$INSERT INTO seen (tenant, id, arrived_us) SELECT x.tenant, x.id, $3 FROM unnest($1::text[], $2::text[]) AS x(tenant, id) RETURNING id$q$);
SELECT floor_run('the store''s statement (uuid fingerprint key)', '',
  $q$INSERT INTO seen_fp (fp, arrived_us) SELECT x.fp, $3 FROM unnest($5::uuid[]) AS x(fp)
     LEFT JOIN LATERAL (SELECT 1 AS one FROM seen_fp s WHERE s.fp = x.fp AND s.arrived_us >= $4 LIMIT 1) f ON true
     WHERE f.one IS NULL ON CONFLICT DO NOTHING RETURNING fp$q$);
SELECT floor_run('ON CONFLICT only (uuid fingerprint key)', '',
  $q$INSERT INTO seen_fp (fp, arrived_us) SELECT x.fp, $3 FROM unnest($5::uuid[]) AS x(fp) ON CONFLICT DO NOTHING RETURNING fp$q$);
SELECT floor_run('a plain INSERT, no check (uuid fingerprint key)', '',
  $q$INSERT INTO seen_fp (fp, arrived_us) SELECT x.fp, $3 FROM unnest($5::uuid[]) AS x(fp) RETURNING fp$q$);
SELECT floor_run('the arrays alone (no table)', '',
  $q$SELECT x.id FROM unnest($1::text[], $2::text[]) AS x(tenant, id) WHERE $3 > 0 AND $4 > 0$q$);
SELECT floor_run('in key order: a lookup, then a plain INSERT (text key)',
  $q$SELECT s.id FROM unnest($1::text[], $2::text[]) AS x(tenant, id)
     JOIN LATERAL (SELECT s.id FROM seen_cur s WHERE s.tenant = x.tenant AND s.id = x.id LIMIT 1) s ON true WHERE $3 > 0 AND $4 > 0$q$,
  $q$INSERT INTO seen (tenant, id, arrived_us) SELECT x.tenant, x.id, $3 FROM unnest($1::text[], $2::text[]) AS x(tenant, id) RETURNING id$q$,
  'sorted');
SELECT floor_run('in key order: a lookup, then a plain INSERT (uuid key)',
  $q$SELECT s.fp FROM unnest($5::uuid[]) AS x(fp)
     JOIN LATERAL (SELECT s.fp FROM seen_fp_cur s WHERE s.fp = x.fp LIMIT 1) s ON true WHERE $3 > 0 AND $4 > 0$q$,
  $q$INSERT INTO seen_fp (fp, arrived_us) SELECT x.fp, $3 FROM unnest($5::uuid[]) AS x(fp) RETURNING fp$q$,
  'sorted');
SELECT floor_run('no key, a hash index on tenant:id: lookup, plain INSERT',
  $q$SELECT s.id FROM unnest($1::text[], $2::text[]) AS x(tenant, id)
     JOIN LATERAL (SELECT s.id FROM seen_h s WHERE (s.tenant || ':' || s.id) = (x.tenant || ':' || x.id)
                   AND s.tenant = x.tenant AND s.id = x.id LIMIT 1) s ON true WHERE $3 > 0 AND $4 > 0$q$,
  $q$INSERT INTO seen_h (tenant, id, arrived_us) SELECT x.tenant, x.id, $3 FROM unnest($1::text[], $2::text[]) AS x(tenant, id) RETURNING id$q$,
  'sorted');
SELECT floor_run('no key, a hash index on the uuid: lookup, plain INSERT',
  $q$SELECT s.fp FROM unnest($5::uuid[]) AS x(fp)
     JOIN LATERAL (SELECT s.fp FROM seen_hf s WHERE s.fp = x.fp LIMIT 1) s ON true WHERE $3 > 0 AND $4 > 0$q$,
  $q$INSERT INTO seen_hf (fp, arrived_us) SELECT x.fp, $3 FROM unnest($5::uuid[]) AS x(fp) RETURNING fp$q$,
  'sorted');
DROP TABLE seen, seen_fp, seen_h, seen_hf, batches, sorted;
