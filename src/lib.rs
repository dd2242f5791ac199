//! taphook: an inline reverse proxy that recognises a data importer's
//! lifecycle steps in its traffic and delivers them as webhooks.
//!
//! The modules follow the path an event travels:
//! [`proxy`] taps the exchange → [`derive`] turns it into events →
//! [`dedup`] drops repeats → [`filter`] picks the webhooks →
//! [`deliver`] sends them. [`rules`] loads and lowers the rules directory
//! that drives all of them, [`store`] keeps sessions, [`metrics`] counts
//! every stage and [`admin`] serves them. [`traffic`] holds the HAR tools:
//! recording, reading, drafting routes, explaining and testing them.

pub mod activity;
pub mod admin;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod deliver;
pub mod demo;
pub mod derive;
pub mod event;
pub mod filter;
pub mod funnel;
pub mod history;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod rules;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod traffic;
pub mod upgrade;
