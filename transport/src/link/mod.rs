//! Links: how a region, a doorbell and an interrupt are obtained. Nothing above a link knows
//! which one it runs on.
//!
//! - [`direct`]: a memfd region and two eventfds passed over a Unix socket (SCM_RIGHTS). For
//!   processes and containers on the host, and every CI test.

pub mod direct;
