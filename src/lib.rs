//! tokengate: a token-handler proxy for Digital River's Commerce API.
//!
//! The browser holds only an opaque, HttpOnly session cookie; tokengate keeps the
//! shopper's access and refresh tokens server side, injects them into proxied API calls,
//! refreshes them before they expire and revokes them at logout. `ARCHITECTURE.md` walks
//! a request through the modules below, listed in the order a request meets them.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod secret;
pub mod session_id;

pub mod app;
pub mod body;
pub mod cookie;
pub mod endpoints;
pub mod error;
pub mod forward;
pub mod guard;
pub mod hosted_login;
pub mod leak_guard;
pub mod oauth;
pub mod ratelimit;
pub mod router;
pub mod runtime;
pub mod server;
pub mod session;
pub mod store;
pub mod upstream;

pub mod admin;
pub mod callback;
pub mod demo;
pub mod metrics;
pub mod telemetry;
pub mod tls;
