//! HTTP routes, one module per feature.

pub mod control;
pub mod receive;
pub mod status;
pub mod tasks;
