//! The HAR tools: recorded traffic and what taphook makes of it, for a
//! person bringing an importer taphook has never seen.
//!
//! [`record`] writes the exchanges the proxy sees to HAR files, secrets
//! replaced by pseudonyms ([`redact`]); [`har`] reads a HAR (taphook's or a
//! browser's) back into exchanges; [`draft`] proposes routes for them;
//! [`explain`] runs rules over them exchange by exchange; [`route_tests`]
//! checks the events they give against expectations (`taphook test`).

pub mod draft;
pub mod explain;
pub mod har;
pub mod record;
pub mod redact;
pub mod route_tests;
