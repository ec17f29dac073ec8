//! The event log in Postgres: how to connect, the schema and its migrations, the database roles
//! each process runs as, and the constants every process agrees on (the wake-up channel, the
//! append lock).

pub mod db;
pub mod roles;
