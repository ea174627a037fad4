//! Answers tollgate writes itself, without a backend.

pub mod respond;
