//! The `lb` commands (binary only; the library holds the machinery they drive).
pub mod bench;
pub mod check_config;
pub mod ctl;
pub mod decap;
pub mod l4;
pub mod l7;
pub mod run;
pub mod signals;
pub mod xdp;
