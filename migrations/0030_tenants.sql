-- The tenant catalog. It lives in the control database (the database of `database_url`, which is
-- also the log of the built-in tenant `default`); every database runs the same migrations, so a
-- tenant's own database has these tables too, empty and unused.
--
-- A tenant's log is a database of its own: `database_name` on the control database's server, or
-- on the server of `database_url` (host and port only: the credentials are each process's own,
-- so no password is ever stored here).
CREATE TABLE tenants (
    slug          text PRIMARY KEY CHECK (slug ~ '^[a-z][a-z0-9]{1,19}$'),
    database_name text NOT NULL,
    database_url  text,
    enabled       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Where an unprefixed GitHub delivery goes: by repository full name, then installation id, then
-- owner login. Keys are stored lower-case (GitHub names are case-insensitive).
CREATE TABLE tenant_routes (
    kind   text NOT NULL CHECK (kind IN ('repo', 'installation', 'owner')),
    key    text NOT NULL,
    tenant text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    PRIMARY KEY (kind, key)
);

-- Tenant tokens, by their SHA-256 only: the token itself is shown once, when made.
CREATE TABLE tenant_tokens (
    token_sha256 bytea PRIMARY KEY,
    tenant       text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Per-tenant settings (`rigctl tenants set`), checked by rigctl before they are written.
CREATE TABLE tenant_settings (
    tenant     text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    key        text NOT NULL,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);

-- Every change to the catalog wakes the processes that serve tenants at once (they also re-read
-- it every few seconds, which covers a notification lost while they were reconnecting).
CREATE FUNCTION rig_tenants_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rig_tenants', '');
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION rig_tenants_changed();
CREATE TRIGGER tenant_settings_changed AFTER INSERT OR UPDATE OR DELETE ON tenant_settings
    FOR EACH STATEMENT EXECUTE FUNCTION rig_tenants_changed();
CREATE TRIGGER tenant_routes_changed AFTER INSERT OR UPDATE OR DELETE ON tenant_routes
    FOR EACH STATEMENT EXECUTE FUNCTION rig_tenants_changed();
CREATE TRIGGER tenant_tokens_changed AFTER INSERT OR UPDATE OR DELETE ON tenant_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION rig_tenants_changed();

-- Every process reads the catalog; only the owner (rigctl) writes it.
GRANT SELECT ON tenants, tenant_routes, tenant_tokens, tenant_settings
    TO rig_ingest, rig_token_projector, rig_cost_projector, rig_stale_heartbeat, rig_notifier;
