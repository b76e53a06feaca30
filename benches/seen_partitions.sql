-- What a batch's lookup of new ids costs the Postgres server as `seen_ids` holds more arrival
-- partitions (benches/seen_floor.sh with SQL=benches/seen_partitions.sql). Four partitions of
-- 1,000,000 ids each and an empty fifth, with the store's hash index on `tenant:id`; 100,000 new
-- ids (none found) looked up in 10 statements of 10,000 shaped as the store's (a lateral `LIMIT 1`
-- per id), in the newest partition only, then in two, three, four and five of them; the
-- server's own time. A fresh database (benches/postgres.sh) has the first case only.
\set ON_ERROR_STOP on
SET client_min_messages = notice;
SET jit = off;
DROP TABLE IF EXISTS sp, batches2;
CREATE TABLE sp (tenant text COLLATE "C" NOT NULL, id text COLLATE "C" NOT NULL, arrived_us bigint NOT NULL) PARTITION BY RANGE (arrived_us);
CREATE INDEX ON sp USING hash ((tenant || ':' || id));
CREATE TABLE sp_1 PARTITION OF sp FOR VALUES FROM (1000) TO (2000);
CREATE TABLE sp_2 PARTITION OF sp FOR VALUES FROM (2000) TO (3000);
CREATE TABLE sp_3 PARTITION OF sp FOR VALUES FROM (3000) TO (4000);
CREATE TABLE sp_4 PARTITION OF sp FOR VALUES FROM (4000) TO (5000);
CREATE TABLE sp_5 PARTITION OF sp FOR VALUES FROM (5000) TO (6000);
-- four old partitions of 1,000,000 ids each
INSERT INTO sp SELECT 't' || lpad((n % 1000)::text, 4, '0'), 'old' || p || '-' || n, p * 1000 + 500 FROM generate_series(1, 4) p, generate_series(0, 999999) n;
ANALYZE sp;
CREATE TABLE batches2 AS
  SELECT b, array_agg(t ORDER BY n) AS t, array_agg(i ORDER BY n) AS i
  FROM (SELECT n, n / 10000 AS b, 't' || lpad((n % 1000)::text, 4, '0') AS t, 'new-' || n AS i FROM generate_series(0, 99999) n) x GROUP BY 1;
CREATE OR REPLACE FUNCTION look(below bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record; t0 timestamptz; tl interval := '0'; n bigint;
BEGIN
  FOR r IN SELECT t, i FROM batches2 ORDER BY b LOOP
    t0 := clock_timestamp();
    EXECUTE 'WITH w AS (SELECT x.tenant, x.id FROM unnest($1::text[], $2::text[]) AS x(tenant, id) JOIN LATERAL (SELECT 1 FROM sp s WHERE (s.tenant || '':'' || s.id) = (x.tenant || '':'' || x.id) AND s.tenant = x.tenant AND s.id = x.id AND s.arrived_us < $3 AND s.arrived_us >= $4 LIMIT 1) f ON true) SELECT count(*) FROM w' INTO n USING r.t, r.i, 6000::int8, below;
    tl := tl + (clock_timestamp() - t0);
  END LOOP;
  RAISE NOTICE '%', format('partitions searched: %s, %s µs an id', (6000 - below) / 1000, round(extract(epoch FROM tl) * 1e6 / 100000, 2));
END $$;
SELECT look(5000); SELECT look(4000); SELECT look(3000); SELECT look(2000); SELECT look(1000);
DROP TABLE sp, batches2;
