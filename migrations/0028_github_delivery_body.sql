-- A GitHub delivery is known by its body as well as by its id: the same signed body sent again
-- under a new X-GitHub-Delivery (a replay of a captured request, or a copy resent by hand) is the
-- same delivery and appends nothing new. The SHA-256 of the raw body, as signed; NULL for the
-- deliveries recorded before this column existed.
ALTER TABLE github_deliveries ADD COLUMN body_sha256 bytea;
CREATE UNIQUE INDEX github_deliveries_body_sha256_key ON github_deliveries (body_sha256);
