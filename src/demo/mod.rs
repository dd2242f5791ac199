//! The reference importer and webhook receiver, and `taphook demo`.
pub mod importer;
pub mod receiver;
