//! taphook: an inline reverse proxy that recognises a data importer's
//! lifecycle steps in its traffic and delivers them as webhooks.
//!
//! The modules follow the path an event travels:
//! [`proxy`] taps the exchange → [`derive`] turns it into events →
//! [`dedup`] drops repeats → [`filter`] picks the webhooks →
//! [`deliver`] sends them. [`rules`] loads and lowers the rules directory
//! that drives all of them, [`store`] keeps sessions, [`metrics`] counts
//! every stage and [`admin`] serves them. [`har`] reads recorded traffic,
//! [`explain`] shows what the rules make of it, [`route_tests`] checks it
//! against expectations and [`draft`] proposes routes for it.

pub mod activity;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod deliver;
pub mod demo;
pub mod derive;
pub mod draft;
pub mod event;
pub mod explain;
pub mod filter;
pub mod funnel;
pub mod har;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod record;
pub mod route_tests;
pub mod rules;
pub mod secret;
pub mod store;
