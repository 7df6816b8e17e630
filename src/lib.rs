//! tokengate: a token-handler proxy for Digital River's Commerce API.
//!
//! The browser holds only an opaque, HttpOnly session cookie; tokengate keeps the
//! shopper's access and refresh tokens server side, injects them into proxied API calls,
//! refreshes them before they expire and revokes them at logout. `ARCHITECTURE.md` walks
//! a request through these modules; the groups below are: startup, the request path,
//! sessions and tokens, the edges (HTTP client, TLS), and operations.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

// Startup: configuration and the values it must keep secret.
pub mod config;
pub mod runtime;
pub mod secret;

// The request path, in the order a request meets it.
pub mod server;
pub mod app;
pub mod context;
pub mod router;
pub mod cors;
pub mod guard;
pub mod ratelimit;
pub mod cookie;
pub mod endpoints;
pub mod forward;
pub mod unauthorized;
pub mod protocol;
mod header_memo;
pub mod header_pool;
mod head_scan;
mod http1;
pub mod deadline;
pub mod poll_time;
pub mod leak_guard;
pub mod scan;
pub mod tail_grams;
pub mod codec;
pub mod body;
pub mod error;

// Sessions, tokens and the hosted login.
pub mod callback;
pub mod clock;
pub mod hosted_login;
pub mod oidc;
pub mod session;
pub mod session_id;
pub mod store;
pub mod tokens;

// The edges.
pub mod tls;
pub mod upstream;

// Operations.
pub mod admin;
pub mod demo;
pub mod metrics;
pub mod telemetry;
pub mod trace;
