//! The event log in Postgres: how to connect, the schema and its migrations, the database roles
//! each process runs as, the constants every process agrees on (the wake-up channel, the append
//! lock), and the [`writer`], the one way events get into the log.

pub mod db;
pub mod roles;
pub mod writer;
