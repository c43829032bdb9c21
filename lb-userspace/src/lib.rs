//! lb: a layered L4/L7 load balancer. This library is what the `lb` binary is made of; the
//! integration tests and benchmarks use it directly.
pub mod admin;
pub mod announce;
pub mod config;
pub mod discovery;
pub mod handover;
pub mod health;
pub mod l4;
pub mod l7;
pub mod loadgen;
pub mod maglev;
pub mod manager;
pub mod pem;
pub mod tls_client;
pub mod xdp;
