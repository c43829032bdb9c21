//! The L7 tier (in progress): upstream pools and how a backend is chosen for a request.
//! Listeners, routing and the proxy itself come next (see the L7 issue).
pub mod selection;
