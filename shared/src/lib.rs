//! The library every rig-conductor binary stands on: the event catalog and its validation,
//! stream ids, the issue-state fold, configuration, database access, the consumer runtime,
//! the TOKEN_USAGE pricing rule, the operations HTTP endpoints and telemetry.

pub mod config;
pub mod consumer;
pub mod db;
pub mod events;
pub mod fold;
pub mod money;
pub mod ops;
pub mod pg;
pub mod process;
pub mod roles;
pub mod shutdown;
pub mod stream_id;
pub mod telemetry;
pub mod usage;

pub use config::Settings;
pub use events::StoredEvent;
pub use stream_id::StreamId;
